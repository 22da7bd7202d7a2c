"""Tracker options: defaults, environment variables, range checks, region -> host."""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import attrs

from tracker._clock import SYSTEM_CLOCK, Clock
from tracker._event import is_text
from tracker._fleet import check_limiter, show_limiter
from tracker.errors import ConfigError

REGIONS: Mapping[str, str] = {
    "us": "https://api.aptrinsic.com",
    "eu": "https://api-eu.aptrinsic.com",
    "us2": "https://api-us2.aptrinsic.com",
}
EVENTS_PATH = "/v1/events/custom"


class OverflowPolicy(str, enum.Enum):
    """What ``track()`` does when ``max_queue_size`` events are already pending."""

    DROP_NEWEST = "drop_newest"  #: refuse the new event (track() returns None)
    DROP_OLDEST = "drop_oldest"  #: accept it, drop the oldest waiting one
    BLOCK = "block"  #: wait for room (up to block_timeout), then QueueFullError
    RAISE = "raise"  #: raise QueueFullError at once


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Marks an option the caller did not pass, so the environment (then the default) applies.
UNSET = _Unset.UNSET

ErrorCallback = Callable[[Any, Any], object]
SuccessCallback = Callable[[Any], object]

# A header value requests can send verbatim; checking here keeps requests from raising
# InvalidHeader with the key quoted in its message.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def _range_text(low: Optional[float], high: Optional[float], low_open: bool) -> str:
    if high is None:
        return f"> {low}" if low_open else f">= {low}"
    return f"in {low}..{high}"


def _number(
    name: str,
    value: object,
    *,
    integer: bool,
    low: Optional[float],
    high: Optional[float] = None,
    low_open: bool = False,
) -> Union[int, float]:
    kind = "an int" if integer else "a number"
    rule = f"{kind} {_range_text(low, high, low_open)}"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"'{name}' must be {rule} (got {value!r})")
    number: Union[int, float] = value  # type: ignore[assignment]
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"'{name}' must be {rule} (got {value!r})")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and number > high
    if too_low or too_high:
        raise ConfigError(f"'{name}' must be {rule} (got {value!r})")
    return number


def _check_int(low: int, high: Optional[int] = None) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        _number(attribute.name, value, integer=True, low=low, high=high)

    return check


def _check_float(
    low: float, *, low_open: bool = False, optional: bool = False
) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        _number(attribute.name, value, integer=False, low=low, low_open=low_open)

    return check


def _check_bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"'{attribute.name}' must be True or False (got {value!r})")


def _check_callback(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"'{attribute.name}' must be callable or None (got {value!r})")


def _check_api_key(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Never echo the value: it is a secret.
    if not isinstance(value, str):
        raise ConfigError(f"'api_key' must be a str (got {type(value).__name__})")
    if not value:
        raise ConfigError("'api_key' is required: pass api_key=... or set PX_API_KEY")
    if not _HEADER_SAFE.fullmatch(value):
        raise ConfigError(
            "'api_key' must be printable ASCII without spaces or line breaks "
            f"(got a str of {len(value)} characters; value not shown)"
        )


def _check_optional_text(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"'{attribute.name}' must be a non-empty str or None (got {value!r})")
    if isinstance(value, str) and not is_text(value):
        raise ConfigError(
            f"'{attribute.name}' must be valid text; it holds lone surrogates (got {value!r})"
        )


def _check_clock(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Clock):
        raise ConfigError(f"'clock' must be a tracker Clock (got {value!r})")


def _to_region(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _check_region(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in REGIONS:
        choices = ", ".join(repr(r) for r in REGIONS)
        raise ConfigError(f"'region' must be one of {choices} (got {value!r})")


def _to_overflow(value: object) -> object:
    if isinstance(value, str) and not isinstance(value, OverflowPolicy):
        try:
            return OverflowPolicy(value.strip().lower().replace("-", "_"))
        except ValueError:
            return value
    return value


def _check_overflow(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, OverflowPolicy):
        choices = ", ".join(repr(p.value) for p in OverflowPolicy)
        raise ConfigError(f"'overflow' must be one of {choices} (got {value!r})")


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _to_path(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _check_ca_bundle(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not os.path.exists(value):
        raise ConfigError(
            f"'ca_bundle' must be the path of a CA bundle file or directory (got {value!r})"
        )


def _check_spool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'spool' must be a directory path or None (got {value!r})")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ConfigError(f"'spool' must be a directory, not a file (got {value!r})")


def _default_workers(config: Config) -> int:
    # Paced, the concurrency follows the round trip up to this cap; unpaced, it is the cap,
    # and a handful of threads saturate a loopback server.
    return 64 if config.rate_limit is not None else 16


def _show_rate(value: Optional[float]) -> str:
    return "off" if value is None else repr(value)


@attrs.frozen(kw_only=True)
class Config:
    """Every option of a Tracker, checked. Build with ``Config.from_options``."""

    api_key: str = attrs.field(validator=_check_api_key, repr=lambda _: "'***'")
    product_key: Optional[str] = attrs.field(default=None, validator=_check_optional_text)
    region: str = attrs.field(default="us", converter=_to_region, validator=_check_region)
    base_url: Optional[str] = attrs.field(default=None, validator=_check_optional_text)
    allow_insecure_http: bool = attrs.field(default=False, validator=_check_bool)
    max_queue_size: int = attrs.field(default=10_000, validator=_check_int(1, 10_000_000))
    overflow: OverflowPolicy = attrs.field(
        default=OverflowPolicy.DROP_NEWEST, converter=_to_overflow, validator=_check_overflow
    )
    block_timeout: Optional[float] = attrs.field(
        default=None, validator=_check_float(0, optional=True)
    )
    rate_limit: Optional[float] = attrs.field(
        default=200.0, validator=_check_float(0, low_open=True, optional=True), repr=_show_rate
    )
    # The cap on requests in flight (and sending threads); below it the tracker runs what
    # the rate and the measured round trip need. 64 hold 200 req/s up to ~300 ms.
    workers: int = attrs.field(
        default=attrs.Factory(_default_workers, takes_self=True), validator=_check_int(1, 256)
    )
    max_retries: int = attrs.field(default=10, validator=_check_int(0, 100))
    max_retry_time: float = attrs.field(default=300.0, validator=_check_float(0, low_open=True))
    backoff_base: float = attrs.field(default=0.5, validator=_check_float(0, low_open=True))
    backoff_max: float = attrs.field(default=30.0, validator=_check_float(0, low_open=True))
    max_retry_after: float = attrs.field(default=60.0, validator=_check_float(0, low_open=True))
    default_retry_after: float = attrs.field(default=1.0, validator=_check_float(0))
    timeout: float = attrs.field(default=10.0, validator=_check_float(0, low_open=True))
    ca_bundle: Optional[str] = attrs.field(
        default=None, converter=_to_path, validator=_check_ca_bundle
    )
    exit_timeout: float = attrs.field(default=5.0, validator=_check_float(0))
    flush_at_exit: bool = attrs.field(default=True, validator=_check_bool)
    on_success: Optional[SuccessCallback] = attrs.field(default=None, validator=_check_callback)
    on_error: Optional[ErrorCallback] = attrs.field(default=None, validator=_check_callback)
    sync_mode: bool = attrs.field(default=False, validator=_check_bool)
    send: bool = attrs.field(default=True, validator=_check_bool)
    clock: Clock = attrs.field(default=SYSTEM_CLOCK, validator=_check_clock, repr=False)
    # The durable spool (see _spool.py): a directory, how soon an event is on disk (0:
    # before track() returns), the disk bound, and fsync on every commit (power loss).
    spool: Optional[str] = attrs.field(default=None, converter=_to_path, validator=_check_spool)
    spool_interval: float = attrs.field(default=0.05, validator=_check_float(0))
    spool_max_bytes: int = attrs.field(default=1 << 30, validator=_check_int(4096))
    spool_fsync: bool = attrs.field(default=False, validator=_check_bool)
    # The fleet-wide limit (see _fleet.py): a redis URL or client; rate_limit is then the
    # total for every tracker sharing it and the API key.
    limiter: Any = attrs.field(default=None, validator=check_limiter, repr=show_limiter)
    #: The options given explicitly (arguments or environment), not defaulted: with a
    #: spool, retries are unlimited unless max_retries or max_retry_time is among them.
    given: frozenset[str] = attrs.field(factory=frozenset, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_base:
            raise ConfigError(
                f"'backoff_max' must be >= 'backoff_base' ({self.backoff_base}) "
                f"(got {self.backoff_max})"
            )
        if self.base_url is not None:
            self._check_base_url(self.base_url)
        if self.spool is not None and self.sync_mode:
            raise ConfigError(
                "'spool' cannot be combined with sync_mode=True (sync mode sends in "
                f"track() and keeps nothing to spool) (got spool={self.spool!r})"
            )
        if self.limiter is not None and self.rate_limit is None:
            raise ConfigError(
                "'limiter' needs a rate_limit: it is the total the fleet shares "
                "(got rate_limit=None)"
            )

    @property
    def retries_unlimited(self) -> bool:
        """With a spool, retryable failures are retried until delivered unless the user
        bounded them explicitly."""
        return self.spool is not None and not ({"max_retries", "max_retry_time"} & self.given)

    def _check_base_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"'base_url' must be an http:// or https:// URL with a host (got {url!r})"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"'base_url' must not have a query or fragment (got {url!r})")
        insecure = parts.scheme == "http" and not is_loopback(parts.hostname)
        if insecure and not self.allow_insecure_http:
            raise ConfigError(
                f"'base_url' must use https:// for a non-loopback host (got {url!r}); "
                "pass allow_insecure_http=True (PX_ALLOW_INSECURE_HTTP=1) to allow it"
            )

    @property
    def base(self) -> str:
        """The PX host in use: ``base_url`` when given, else the region's host."""
        return (self.base_url or REGIONS[self.region]).rstrip("/")

    @property
    def endpoint(self) -> str:
        return self.base + EVENTS_PATH

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        environ: Optional[Mapping[str, str]] = None,
    ) -> Config:
        """Merge explicit options (UNSET = not given) over the environment and defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name not in _FIELD_NAMES or name == "given":
                raise ConfigError(f"unknown option {name!r}")
            if value is not UNSET:
                values[name] = value
        for name, (var, parse) in _ENV.items():
            if name in values:
                continue
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            values[name] = parse(name, var, raw)
        if "api_key" not in values:
            raise ConfigError("'api_key' is required: pass api_key=... or set PX_API_KEY")
        values["given"] = frozenset(values)
        return cls(**values)


def _env_text(name: str, var: str, raw: str) -> str:
    return raw.strip()


def _env_int(name: str, var: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"'{name}' (from {var}) must be an int (got {raw!r})") from None


def _env_bool(name: str, var: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"'{name}' (from {var}) must be one of 1/0, true/false, yes/no, on/off (got {raw!r})"
    )


def _env_rate(name: str, var: str, raw: str) -> Optional[float]:
    text = raw.strip().lower()
    if text in ("0", "off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"'{name}' (from {var}) must be a number of requests per second, or 0/off (got {raw!r})"
        ) from None


_ENV: Mapping[str, tuple[str, Callable[[str, str, str], Any]]] = {
    "api_key": ("PX_API_KEY", _env_text),
    "product_key": ("PX_PRODUCT_KEY", _env_text),
    "region": ("PX_REGION", _env_text),
    "base_url": ("PX_BASE_URL", _env_text),
    "allow_insecure_http": ("PX_ALLOW_INSECURE_HTTP", _env_bool),
    "max_queue_size": ("PX_MAX_QUEUE_SIZE", _env_int),
    "overflow": ("PX_OVERFLOW", _env_text),
    "workers": ("PX_WORKERS", _env_int),
    "rate_limit": ("PX_RATE_LIMIT", _env_rate),
    "ca_bundle": ("PX_CA_BUNDLE", _env_text),
    "spool": ("PX_SPOOL", _env_text),
    "spool_max_bytes": ("PX_SPOOL_MAX_BYTES", _env_int),
    "limiter": ("PX_LIMITER", _env_text),
}

_FIELD_NAMES = frozenset(a.name for a in attrs.fields(Config))
