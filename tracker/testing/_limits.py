"""FakePX's rate limiters: a token bucket, and a leaky bucket doing nginx ``limit_req``'s sums.

Each limiter answers ``admit(now)`` (``now`` in seconds, never going backwards in
practice) with None to reject the request (FakePX answers 429) or the seconds to hold
it before answering (0.0: at once). Neither is thread-safe: FakePX calls them under its
lock.
"""

from __future__ import annotations

import math
from typing import Optional, Protocol

LIMITERS = ("token_bucket", "leaky")


class Limiter(Protocol):
    def admit(self, now: float) -> Optional[float]:
        """None: reject; else the seconds to hold the request before answering it."""


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` per second and full at the
    start; a request takes one token or is rejected. ``burst`` is how many requests may
    arrive at once beyond the first (capacity ``burst + 1``); by default one second's
    worth (capacity ``max(1, rate)``), FakePX's limiter since its first version."""

    def __init__(self, rate: float, burst: Optional[int] = None) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate) if burst is None else burst + 1.0
        self._tokens = self.capacity
        self._refilled: Optional[float] = None

    def admit(self, now: float) -> Optional[float]:
        if self._refilled is None:
            self._refilled = now
        elif now > self._refilled:  # time that went backwards neither refills nor drains
            self._tokens = min(self.capacity, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return None


class LeakyBucket:
    """nginx's ``limit_req`` for one key, in its own integer units: the state is the
    excess (in thousandths of a request) and the time of the last admitted request (in
    whole milliseconds). A request arriving ``ms`` after it makes the excess
    ``max(0, excess - rate * ms / 1000 + 1000)`` (rate in thousandths of a request per
    second, integer division); over ``burst * 1000`` it is rejected and the state stays
    as it was, else the state takes the new values.

    With ``delay=False`` (nginx's ``nodelay``) an admitted request is answered at once;
    with ``delay=True`` (nginx without ``nodelay``) it is held ``excess * 1000 / rate``
    milliseconds, until it conforms to the rate. The first request for a key has no
    excess, so ``burst + 1`` requests pass back to back, and with ``burst=0`` two
    requests less than ``1 / rate`` apart (at 200 r/s: within the same 5 ms) cannot both
    pass.
    """

    def __init__(self, rate: float, burst: int = 0, delay: bool = False) -> None:
        # nginx keeps rates in thousandths of a request per second ("200r/s" -> 200000).
        self.rate_milli = max(1, round(rate * 1000))
        self.burst_milli = burst * 1000
        self.delay = delay
        self._excess = 0
        self._last_ms: Optional[int] = None

    def admit(self, now: float) -> Optional[float]:
        now_ms = _milliseconds(now)
        if self._last_ms is None:  # a key nginx has not seen: no excess, never delayed
            self._last_ms = now_ms
            return 0.0
        elapsed_ms = now_ms - self._last_ms
        # As nginx since 1.15.0: time that went backwards gives no credit (and a clock
        # stepped back by over a minute counts as 1 ms, so the key is not stuck).
        if elapsed_ms < -60_000:
            elapsed_ms = 1
        elif elapsed_ms < 0:
            elapsed_ms = 0
        excess = max(0, self._excess - self.rate_milli * elapsed_ms // 1000 + 1000)
        if excess > self.burst_milli:
            return None
        self._excess = excess
        if elapsed_ms:
            self._last_ms = now_ms
        if not self.delay:
            return 0.0
        return (excess * 1000 // self.rate_milli) / 1000


def _milliseconds(seconds: float) -> int:
    # nginx truncates its clock to whole milliseconds; the nudge keeps a time such as
    # 10.005 s (stored as 10.00499999...) in the millisecond it names.
    return math.floor(seconds * 1000 + 1e-6)


def check_limit(rate_limit: object, limiter: object, burst: object, delay: object) -> None:
    """Raise ValueError naming the option and its rule when the combination is invalid."""
    if rate_limit is not None and (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, (int, float))
        or not rate_limit >= 0
        or math.isinf(rate_limit)
    ):
        raise ValueError(
            f"'rate_limit' must be a finite number of requests per second >= 0, or None "
            f"(got {rate_limit!r})"
        )
    if limiter not in LIMITERS:
        raise ValueError(f"'limiter' must be 'token_bucket' or 'leaky' (got {limiter!r})")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 0):
        raise ValueError(f"'burst' must be a whole number >= 0, or None (got {burst!r})")
    if not isinstance(delay, bool):
        raise ValueError(f"'delay' must be True or False (got {delay!r})")
    if delay and limiter != "leaky":
        raise ValueError(
            f"'delay' applies to limiter='leaky' only (got limiter={limiter!r} with delay=True)"
        )


def make_limiter(
    rate_limit: Optional[float], limiter: str, burst: Optional[int], delay: bool
) -> Optional[Limiter]:
    """A fresh limiter in its starting state, or None when ``rate_limit`` is off (None or 0)."""
    if not rate_limit:
        return None
    if limiter == "leaky":
        return LeakyBucket(rate_limit, burst or 0, delay)
    return TokenBucket(rate_limit, burst)
