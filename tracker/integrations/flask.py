"""Flask: ``init_app(app)`` configures the process-wide tracker from ``app.config``.

Options come from two kinds of config keys, ``PX_TRACKER`` winning where both give one:

- ``PX_TRACKER``: a dict of ``Tracker`` options, as Python values
  (``{"api_key": ..., "product_key": ..., "exit_timeout": 5.0}``);
- the environment variables' names (``PX_API_KEY``, ``PX_PRODUCT_KEY``, ``PX_BASE_URL``,
  ``PX_WORKERS``, ... as in the README's options table): a string is read as that
  variable would be (``"1"``/``"true"``, ``"off"`` for ``PX_RATE_LIMIT``), any other value
  is passed as it is.

Options given by neither come from the environment, then the defaults, as always. Views
then call ``tracker.track(...)``; the tracker is also ``app.extensions["px_tracker"]``.
Shutdown needs nothing: the tracker's exit flush delivers what is pending at exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracker import _api
from tracker._config import _ENV
from tracker._tracker import Tracker
from tracker.errors import ConfigError
from tracker.integrations._figures import missing_extra

try:
    from flask import Flask
except ImportError as exc:  # the extra is not installed
    raise missing_extra(__name__, "flask", "flask") from exc

__all__ = ["CONFIG_KEY", "EXTENSION", "init_app", "options_from_config"]

#: The ``app.config`` key of the dict of Tracker options.
CONFIG_KEY = "PX_TRACKER"
#: The tracker's name in ``app.extensions``.
EXTENSION = "px_tracker"


def init_app(app: Flask) -> Tracker:
    """Configure the process-wide tracker (``tracker.configure``) with the options of
    ``app.config`` and keep it in ``app.extensions["px_tracker"]``; returns it.

    Raises ``ConfigError`` naming the option (and the config key) for a bad value."""
    t = _api.configure(**options_from_config(app.config))
    app.extensions[EXTENSION] = t
    return t


def options_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Tracker options in a Flask config (or any mapping): see the module's doc."""
    options: dict[str, Any] = {}
    for name, (key, parse) in _ENV.items():
        if key in config:
            value = config[key]
            options[name] = parse(name, key, value) if isinstance(value, str) else value
    given = config.get(CONFIG_KEY)
    if given is not None:
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"app.config[{CONFIG_KEY!r}] must be a dict of Tracker options "
                f"(got {type(given).__name__})"
            )
        options.update(given)
    return options
