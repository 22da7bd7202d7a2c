"""Hosts that fork or end processes where Python's own hooks do not see it.

uWSGI forks its workers from C: ``os.register_at_fork`` hooks never run there, and a
worker forked while another thread of the master held the GIL hangs at birth, blocked
taking it (unbit/uwsgi#1149, #1369). So in a uWSGI master no sender thread of ours ever
starts: what the master tracks (at import, say) waits in memory with a claim file beside
it, and the first worker to remove that file (an atomic ``unlink``: exactly one process
wins) sends those events; every other worker, and every later respawn, forgets them. The
master runs no exit hook of Python's, so a worker is the only place they can leave from.

Workers run Python's ``atexit`` when uWSGI reloads or stops them; without
``--enable-threads`` our threads only run while a request holds the interpreter, so
events wait for the next request or the worker's exit, and one error says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from types import ModuleType
from typing import Any, Callable, Optional

logger = logging.getLogger("tracker")

_warned_threads = False


def uwsgi() -> Optional[ModuleType]:
    """The ``uwsgi`` module when this process runs embedded in uWSGI (which puts it in
    ``sys.modules`` before the app loads), else None."""
    return sys.modules.get("uwsgi")


def in_uwsgi_master() -> bool:
    """True in a uWSGI process that is not (yet) a worker: the master, or the first
    process of a server without ``--master`` while it loads the app. Threads started
    there would be inherited, mid-GIL, by every worker forked later."""
    module = uwsgi()
    if module is None:
        return False
    try:
        return int(module.worker_id()) == 0 and int(_call(module, "mule_id", 0)) == 0
    except Exception:  # an embedding that lacks the calls: behave as anywhere else
        return False


def _call(module: ModuleType, name: str, default: Any) -> Any:
    function = getattr(module, name, None)
    return default if function is None else function()


def install_uwsgi_post_fork(hook: Callable[[], object]) -> None:
    """Run ``hook`` in each uWSGI worker right after uWSGI forked it, chained with the
    app's own ``@postfork`` functions (uwsgidecorators keeps one chain; join it)."""
    module = uwsgi()
    if module is None:
        return
    try:
        import uwsgidecorators  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415
    except Exception:  # absent, or it refuses to load (it does without --master)
        previous = getattr(module, "post_fork_hook", None)

        def chained() -> None:
            if previous is not None:
                previous()
            hook()

        module.post_fork_hook = chained  # type: ignore[attr-defined]
        return
    uwsgidecorators.postfork_chain.append(hook)


def warn_if_threads_disabled() -> None:
    """In a uWSGI worker without ``--enable-threads``: one error naming the option."""
    global _warned_threads
    module = uwsgi()
    if module is None or _warned_threads:
        return
    # uWSGI says whether it initialised Python threads (recent releases always do, and
    # --enable-threads is a stub there); older ones only know their options.
    threads = getattr(module, "has_threads", None)
    if threads is None:
        options = getattr(module, "opt", {})
        threads = any(options.get(name) for name in ("enable-threads", "threads", "gevent"))
    if threads:
        return
    _warned_threads = True
    logger.error(
        "uWSGI runs without --enable-threads: the tracker's sender threads only run "
        "while a request is being served, so events wait for the next request or for "
        "the worker's exit. Start uWSGI with --enable-threads (or enable-threads = true)."
    )


class Claim:
    """A file whose removal hands a uWSGI master's held events to exactly one worker."""

    __slots__ = ("path",)

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="px-tracker-handoff-")
        os.close(fd)

    def take(self) -> bool:
        """True in the one process that removes the file first."""
        try:
            os.unlink(self.path)
        except OSError:
            return False
        return True

    @property
    def taken(self) -> bool:
        return not os.path.exists(self.path)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
