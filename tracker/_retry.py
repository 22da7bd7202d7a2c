"""What an answer means and when to try again: classification, Retry-After, the policy."""

from __future__ import annotations

import enum
import itertools
import math
from email.utils import parsedate_to_datetime
from typing import Optional

import attrs
import backoff


class Kind(enum.Enum):
    """What one attempt came to."""

    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # RETRYABLE below, connection errors, timeouts
    RATE_LIMITED = "rate_limited"  # 429: every sender pauses, then the event is retried
    UNAUTHORIZED = "unauthorized"  # 401, 403: permanent
    REJECTED = "rejected"  # every other answer: permanent


#: The statuses retried with backoff: 408 and every 5xx except 501 (Not Implemented) and
#: 505 (HTTP Version Not Supported), which no retry can change. 429 is retried too, after
#: its pause.
NOT_RETRYABLE_5XX = frozenset({501, 505})


def classify(status: int) -> Kind:
    if 200 <= status < 300:
        return Kind.DELIVERED
    if status == 429:
        return Kind.RATE_LIMITED
    if status == 408 or (500 <= status < 600 and status not in NOT_RETRYABLE_5XX):
        return Kind.RETRY
    if status in (401, 403):
        return Kind.UNAUTHORIZED
    return Kind.REJECTED


def parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None
    when absent or unreadable. ``now`` is the wall-clock time, for dates."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > 64:  # no valid form is this long; do not parse a hostile one
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
        if when is None:  # Python 3.9 returns None for some unreadable dates
            return None
        # A zone offset out of range raises here, not in the parser.
        delay = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


@attrs.frozen
class Decision:
    """What to do after a failed attempt: retry in ``delay`` seconds, or give up (None).
    ``failures`` is the count of retryable failures (429s excluded) after this answer."""

    delay: Optional[float]
    failures: int


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When to try an event again, as a value (compare urllib3's Retry).

    Retryable failures wait a fully jittered exponential backoff (``backoff.expo`` +
    ``backoff.full_jitter``) and count against ``max_retries``. A 429 waits for its
    Retry-After (capped at ``max_retry_after``; ``default_retry_after`` when absent) and
    does not use up ``max_retries``: the server told us when to come back. Nothing is
    retried once the next attempt would start more than ``max_retry_time`` after the
    first. ``max_retries=None`` and ``max_retry_time=math.inf`` retry until delivered.
    """

    max_retries: Optional[int]
    max_retry_time: float
    backoff_base: float
    backoff_max: float
    max_retry_after: float
    default_retry_after: float
    # backoff's expo schedule up to its cap, computed once rather than kept as a
    # generator in every retrying event; later retries wait the cap.
    waits: tuple[float, ...] = attrs.field(init=False)

    @waits.default
    def _schedule(self) -> tuple[float, ...]:
        expo = backoff.expo(base=2, factor=self.backoff_base, max_value=self.backoff_max)
        next(expo)  # backoff's generators are primed with a first, empty next()
        limit = 64 if self.max_retries is None else max(1, self.max_retries)
        waits: list[float] = []
        for wait in itertools.islice(expo, limit):
            waits.append(wait)
            if wait >= self.backoff_max:
                break
        return tuple(waits)

    def pause(self, retry_after: Optional[float]) -> float:
        """How long every sender waits after a 429 with this Retry-After (None: absent)."""
        if retry_after is None:
            return self.default_retry_after
        return min(retry_after, self.max_retry_after)

    def backoff(self, failures: int) -> float:
        """The fully jittered wait before the retry after ``failures`` failures (>= 1)."""
        return backoff.full_jitter(self.waits[min(failures, len(self.waits)) - 1])

    def decide(
        self, kind: Kind, *, failures: int, first_attempt: float, now: float, pause: float
    ) -> Decision:
        """After a failed attempt of kind RETRY or RATE_LIMITED (``pause``: its 429 pause),
        given the failures before it and when the event was first attempted."""
        if kind is Kind.RATE_LIMITED:
            delay = pause
        else:
            failures += 1
            if self.max_retries is not None and failures > self.max_retries:
                return Decision(None, failures)
            delay = self.backoff(failures)
        if now + delay - first_attempt > self.max_retry_time:
            return Decision(None, failures)
        return Decision(delay, failures)
