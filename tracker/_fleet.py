"""One PX rate limit for the whole fleet: the pacing seam's Redis implementation.

``RedisPacer`` keeps one GCRA per API key and endpoint in Redis, shared by every tracker
that uses that Redis: a Lua script (one atomic step, the server's clock from ``TIME``,
so hosts' clocks never matter) hands out the next slots of the common schedule, evenly
spaced at ``rate_limit`` in total, and no further ahead than ``HORIZON``. A process takes
slots in grants of 1, 2 or 4 (growing while it keeps using them back to back), so Redis
costs one round trip per request at most, and a busy process cannot reserve more than
one grant ahead of a quiet one. The round trip runs in ``refill``, on a sender thread,
outside the buffer's lock; ``track()`` never touches Redis.

A 429 writes a pause-until (server time) into the same key; every pacer reads it with
its next grant and pauses too. Redis down, slow (over ``SOCKET_TIMEOUT``), restarted or
failing over: the pacer falls back to a ``LocalPacer`` at its last known share of the
limit (``rate_limit`` divided by the trackers that touched the key in the last
``MEMBER_WINDOW`` seconds), logs it once, counts it, and tries Redis again with backoff.

Keys: ``px-tracker:{<fingerprint>}`` (a hash: ``tat``, ``pause``, microseconds of server
time) and ``px-tracker:{<fingerprint>}:members`` (a sorted set of tracker ids by last
seen), where the fingerprint is a SHA-256 of the API key and endpoint: the key itself is
never written. Both expire when unused.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tracker._clock import Clock
from tracker._pacing import LocalPacer
from tracker.errors import ConfigError

if TYPE_CHECKING:
    from tracker._config import Config

logger = logging.getLogger("tracker")

SCHEMES = ("redis", "rediss", "unix")
EXTRA = "pip install 'px-tracker[redis]'"
SOCKET_TIMEOUT = 0.2  # seconds: slower than this, Redis counts as down (local pacing)
GRANT_MAX = 4  # slots per round trip at most
HORIZON = 0.02  # seconds: no slot is granted further ahead than this (or 2 intervals)
STALE = 0.1  # seconds: a granted slot not taken this late is given up (or 2 intervals)
RETRY_MIN = 0.5  # seconds before trying Redis again after a failure, doubling...
RETRY_MAX = 10.0  # ...up to this
MEMBER_WINDOW = 60.0  # seconds: the trackers seen within it share the limit
KEY_TTL_MS = 120_000  # unused keys expire

# KEYS: the schedule hash, the members set. ARGV: interval, slots wanted, pause to publish,
# horizon (microseconds), member id, member window and key TTL (ms). Returns: slots
# granted, microseconds from now to the first of them (or to the next chance of one), the
# pause left (microseconds, 0: none), trackers seen sharing.
SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause')
local tat = tonumber(state[1] or '0')
local pause_until = tonumber(state[2] or '0')
if pause > 0 and now + pause > pause_until then pause_until = now + pause end
if tat < pause_until then tat = pause_until end
if tat < now then tat = now end
local first = tat
local granted = 0
while granted < want and tat <= now + horizon do
  tat = tat + interval
  granted = granted + 1
end
redis.call('HSET', KEYS[1], 'tat', tat, 'pause', pause_until)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]) * 1000)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local wait = first - now
if granted == 0 then wait = first - now - horizon end
local left = pause_until - now
if left < 0 then left = 0 end
return {granted, wait, left, redis.call('ZCARD', KEYS[2])}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts so


def fingerprint(api_key: str, endpoint: str) -> str:
    """What names the shared limit in Redis: neither the key nor reversible to it."""
    digest = hashlib.sha256(b"px-tracker limiter\0" + api_key.encode() + b"\0" + endpoint.encode())
    return digest.hexdigest()[:32]


# -- the option -------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or ``?password=``) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if k.lower() == 'password' else v}" for k, v in pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def show_limiter(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        return repr(redact_url(value))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def check_limiter(_: Any, attribute: Any, value: Any) -> None:
    """The ``limiter`` option: None, a redis URL, or a client; redis-py must be there."""
    if value is None:
        return
    if isinstance(value, str):
        scheme = urlsplit(value.strip()).scheme.lower()
        if scheme not in SCHEMES:
            raise ConfigError(
                "'limiter' must be a redis://, rediss:// or unix:// URL or a redis.Redis "
                f"client (got {redact_url(value)!r})"
            )
    elif not (callable(getattr(value, "evalsha", None)) and hasattr(value, "script_load")):
        raise ConfigError(
            "'limiter' must be a redis://, rediss:// or unix:// URL or a redis.Redis "
            f"client (got a {type(value).__name__})"
        )
    try:
        import redis  # noqa: F401, PLC0415 - the optional extra, imported when used
    except ImportError:
        raise ConfigError(f"'limiter' needs the redis package: {EXTRA}") from None


def connect(limiter: Any) -> Any:
    """A client for the option's value: a URL gets a new client (short timeouts, no
    retries: a slow Redis means local pacing, not a stalled sender); a client is used as
    given (redis-py rebuilds its connections in a forked child)."""
    if not isinstance(limiter, str):
        return limiter
    import redis  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    return redis.Redis.from_url(
        limiter.strip(),
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


# -- the pacer ----------------------------------------------------------------------------


class RedisPacer:
    """The ``Pacer`` of a tracker sharing its limit through Redis (see the module
    docstring). Methods other than ``refill`` run under the buffer's lock; the state that
    ``refill`` changes is guarded by the pacer's own lock as well."""

    def __init__(self, config: Config, client: Any = None) -> None:
        rate = config.rate_limit
        if rate is None:
            raise ConfigError("'limiter' needs a rate_limit (the total for the fleet)")
        self._clock: Clock = config.clock
        self._rate = rate
        self._interval = 1.0 / rate
        self._horizon = max(HORIZON, 2 * self._interval)
        # A slot taken a little late (a busy host) still stands for one request of the
        # schedule; one left far behind means the demand stopped.
        self._stale = max(STALE, 2 * self._interval)
        self._cap = config.workers
        self._client = connect(config.limiter) if client is None else client
        self._url = config.limiter if isinstance(config.limiter, str) else None
        fp = fingerprint(config.api_key, config.endpoint)
        self._keys = (f"px-tracker:{{{fp}}}", f"px-tracker:{{{fp}}}:members")
        self._member = uuid.uuid4().hex
        self._sha = SCRIPT_SHA
        self._measure = LocalPacer(rate, config.workers)  # latency -> concurrency
        self._lock = threading.Lock()
        self._slots: deque[float] = deque()  # monotonic times of the granted slots
        self._want = 1  # slots to ask for next time
        self._last_slot = -1e9  # planned time of the last granted slot taken
        self._wait_until = 0.0  # Redis said: no slot before this
        self._paused_until = 0.0
        self._publish = 0.0  # a 429's pause, to write into Redis
        self._due = False  # turn() needs a round trip
        self._refilling = False
        self._members = 1
        self._fallback: Optional[LocalPacer] = None
        self._retry_at = 0.0
        self._backoff = RETRY_MIN
        self._fallbacks = 0
        self.round_trips = 0  # for the benchmarks

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url else "a redis client"
        return f"<RedisPacer {where} rate={self._rate:g} fallback={self._fallback is not None}>"

    # -- the seam (buffer's lock held) ------------------------------------------------------

    def turn(self, now: float) -> float:
        with self._lock:
            if now < self._paused_until:
                return self._paused_until - now
            fallback = self._fallback
            if fallback is not None:
                if now >= self._retry_at and not self._refilling:
                    self._due = True
                    return self._interval  # ask Redis first (refill); this is no wait
                return fallback.turn(now)
            slots = self._slots
            while slots and now - slots[0] > self._stale:
                slots.popleft()  # too late to use: the schedule has moved on
                self._last_slot = -1e9
            if slots:
                if now < slots[0]:
                    return slots[0] - now
                self._last_slot = slots.popleft()
                if len(slots) == 1 and not self._due:
                    # In the middle of a grant of several: demand goes on, so ask for
                    # the next one while the last slot comes due.
                    self._want = min(GRANT_MAX, self._want * 2)
                    self._due = True
                return 0.0
            if now < self._wait_until:
                return self._wait_until - now
            if not self._due:
                # Demand that keeps using its grants back to back gets bigger ones.
                sustained = now - self._last_slot <= 2 * self._interval + self._horizon
                self._want = min(GRANT_MAX, self._want * 2) if sustained else 1
                self._due = True
            return self._interval

    def took(self, now: float, spare: int, waiting_since: float) -> None:
        # The shared schedule's grants are not the senders' to judge: the count stays
        # at Little's law on the mean round trip, unless pacing locally.
        with self._lock:
            fallback = self._fallback
        if fallback is not None:
            fallback.took(now, spare, waiting_since)

    def paused_until(self) -> float:
        with self._lock:
            fallback = self._fallback
            mine = self._paused_until
        return mine if fallback is None else max(mine, fallback.paused_until())

    def rate_limited(self, now: float, sent_at: float, pause: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, now + pause)
            self._slots.clear()
            if self._fallback is None:
                self._publish = max(self._publish, pause)
            else:  # Redis is down: nobody to tell
                self._fallback.rate_limited(now, sent_at, pause)

    def answered(self, now: float, sent_at: float) -> None:
        self._measure.answered(now, sent_at)
        with self._lock:
            if self._fallback is not None:
                self._fallback.answered(now, sent_at)

    def written(self, sent_at: float, at: float) -> None:
        fallback = self._fallback  # the shared schedule spaces grants; local pacing, sends
        if fallback is not None:
            fallback.written(sent_at, at)

    def concurrency(self) -> int:
        fallback = self._fallback
        return (fallback or self._measure).concurrency()

    def rate(self, now: float) -> Optional[float]:
        fallback = self._fallback
        return self._rate if fallback is None else fallback.rate(now)

    def fallbacks(self) -> Optional[int]:
        return self._fallbacks

    def wants_refill(self) -> bool:
        with self._lock:
            return (self._due or self._publish > 0) and not self._refilling

    # -- the round trip (no buffer lock) ----------------------------------------------------

    def refill(self) -> None:
        """Ask Redis for slots (and publish a 429's pause); fall back on any failure."""
        for _ in range(2):  # a pause that arrived during the round trip goes out at once
            with self._lock:
                if self._refilling or not (self._due or self._publish > 0):
                    return
                self._refilling = True
                want = self._want if self._due else 0
                publish, self._publish = self._publish, 0.0
                self._due = False
            try:
                try:
                    answer = self._call(want, publish)
                except Exception as exc:  # any trouble means local pacing
                    with self._lock:
                        self._failed(exc, self._clock.monotonic())
                    return
                with self._lock:
                    self._apply(answer, self._clock.monotonic())
            finally:
                with self._lock:
                    self._refilling = False

    def _call(self, want: int, publish: float) -> list[int]:
        args = (
            round(self._interval * 1e6),
            want,
            round(publish * 1e6),
            round(self._horizon * 1e6),
            self._member,
            round(MEMBER_WINDOW * 1000),
            KEY_TTL_MS,
        )
        self.round_trips += 1
        client = self._client
        try:
            answer = client.evalsha(self._sha, 2, *self._keys, *args)
        except Exception as exc:
            if not _no_script(exc):
                raise
            # Redis restarted or failed over to a replica without the script: load it.
            self._sha = client.script_load(SCRIPT)
            answer = client.evalsha(self._sha, 2, *self._keys, *args)
        return [int(v) for v in answer]

    def _apply(self, answer: list[int], now: float) -> None:
        granted, wait_us, pause_us, members = answer
        if self._fallback is not None:
            self._fallback = None
            self._backoff = RETRY_MIN
            logger.info("limiter: Redis answers again; pacing with the fleet's shared limit")
        self._members = max(1, members)
        # ``now`` is after the answer: the server's moment lies before it, so slots are
        # placed a little late, never early.
        if pause_us > 0:
            self._paused_until = max(self._paused_until, now + pause_us / 1e6)
            self._slots.clear()
        if granted:
            first = now + wait_us / 1e6
            self._slots.extend(first + k * self._interval for k in range(granted))
        else:
            self._wait_until = now + max(0.0, wait_us / 1e6)

    def _failed(self, exc: BaseException, now: float) -> None:
        self._retry_at = now + self._backoff
        self._backoff = min(RETRY_MAX, self._backoff * 2)
        self._slots.clear()
        if self._fallback is not None:
            return
        share = self._rate / self._members
        self._fallback = LocalPacer(share, self._cap)
        self._fallbacks += 1
        logger.warning(
            "limiter: Redis did not answer (%s); pacing locally at %.4g req/s (rate_limit "
            "shared by %d tracker(s)) until it does",
            _describe(exc, self._url),
            share,
            self._members,
        )


def _no_script(exc: BaseException) -> bool:
    from redis.exceptions import NoScriptError  # noqa: PLC0415

    return isinstance(exc, NoScriptError) or str(exc).startswith("NOSCRIPT")


def _describe(exc: BaseException, url: Optional[str]) -> str:
    text = f"{type(exc).__name__}: {exc}"
    password = urlsplit(url).password if url else None
    return text.replace(password, "***") if password else text
