"""The Tracker: the thin public front that validates, admits and wires one pipeline."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Optional, Union

from tracker import _lifecycle
from tracker._aio import AsyncMixin
from tracker._callbacks import Warnings
from tracker._clock import Clock, Deadline
from tracker._config import UNSET, Config, ErrorCallback, OverflowPolicy, SuccessCallback, _Unset
from tracker._core import VERSION, Core
from tracker._counters import QUEUE_OVERFLOW, SPOOL_FULL, Stats
from tracker._event import CustomEvent, UserType, make_event
from tracker._overflow import Dropped
from tracker._telemetry import Health

__all__ = ["VERSION", "Tracker"]

logger = logging.getLogger("tracker")

#: Seconds of failed requests with no success in between after which health() says
#: unhealthy: PX (or the way to it) has been down that long.
UNHEALTHY_AFTER = 60.0

# A drop because a bound is reached: what is full, and the option that bounds it (warned
# about at most once a minute).
_FULL = {SPOOL_FULL: ("spool", "spool_max_bytes"), QUEUE_OVERFLOW: ("queue", "max_queue_size")}


class _Holder:
    """The Tracker's current pipeline, reachable from its finalizer without the Tracker."""

    __slots__ = ("core",)

    def __init__(self, core: Core) -> None:
        self.core = core

    def orphan(self) -> None:
        self.core.orphan()


class Tracker(_lifecycle.Rebuildable, AsyncMixin):
    """Sends PX custom events from background threads; see the README for the contract.

    ``track()`` validates on the caller's thread and queues; daemon senders deliver with
    retries, pacing and 429 pauses; ``flush()`` waits; ``shutdown()`` (also at exit)
    flushes within a deadline and drops, counted, whatever is left. ``aflush()``,
    ``ashutdown()`` and ``async with`` do the same for asyncio without blocking the loop.
    """

    def __init__(
        self,
        api_key: Union[str, _Unset] = UNSET,
        *,
        product_key: Union[Optional[str], _Unset] = UNSET,
        region: Union[str, _Unset] = UNSET,
        base_url: Union[Optional[str], _Unset] = UNSET,
        allow_insecure_http: Union[bool, _Unset] = UNSET,
        max_queue_size: Union[int, _Unset] = UNSET,
        overflow: Union[OverflowPolicy, str, _Unset] = UNSET,
        block_timeout: Union[Optional[float], _Unset] = UNSET,
        rate_limit: Union[Optional[float], _Unset] = UNSET,
        workers: Union[int, _Unset] = UNSET,
        max_retries: Union[int, _Unset] = UNSET,
        max_retry_time: Union[float, _Unset] = UNSET,
        backoff_base: Union[float, _Unset] = UNSET,
        backoff_max: Union[float, _Unset] = UNSET,
        max_retry_after: Union[float, _Unset] = UNSET,
        default_retry_after: Union[float, _Unset] = UNSET,
        timeout: Union[float, _Unset] = UNSET,
        ca_bundle: Union[Optional[str], _Unset] = UNSET,
        exit_timeout: Union[float, _Unset] = UNSET,
        flush_at_exit: Union[bool, _Unset] = UNSET,
        on_success: Union[Optional[SuccessCallback], _Unset] = UNSET,
        on_error: Union[Optional[ErrorCallback], _Unset] = UNSET,
        sync_mode: Union[bool, _Unset] = UNSET,
        send: Union[bool, _Unset] = UNSET,
        clock: Union[Clock, _Unset] = UNSET,
        spool: Union[Optional[str], os.PathLike[str], _Unset] = UNSET,
        spool_interval: Union[float, _Unset] = UNSET,
        spool_max_bytes: Union[int, _Unset] = UNSET,
        spool_fsync: Union[bool, _Unset] = UNSET,
        limiter: Union[Any, _Unset] = UNSET,
    ) -> None:
        options = dict(locals())
        del options["self"]
        self._config = config = Config.from_options(options)
        self._product_key = config.product_key
        self._now_ms = config.clock.time_ms
        self._on_error = config.on_error
        self._warnings = Warnings(config.clock)
        self._lock = threading.Lock()  # rebuilds and shutdown, one at a time
        self._closed = False
        self._holder = _Holder(self._new_core())
        weakref.finalize(self, self._holder.orphan).atexit = False
        _lifecycle.register(self)
        self._core.start()

    def _new_core(self) -> Core:
        core = Core(self._config, self._warnings)
        if self._closed:
            core.finished = True
            core.buffer.close()
            core.buffer.stop()
        _lifecycle.add_core(core)
        return core

    @property
    def _core(self) -> Core:
        return self._holder.core

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        parent = self._holder.core
        if parent.claim is not None:
            # A uWSGI master's held events: the worker that claims them sends them from
            # its birth, without waiting for a request.
            self._holder.core = core = self._new_core()
            core.take_over(parent)
        # Otherwise the child's pipeline is built on its first use (``_current``): by
        # then a host that patches threading after the fork (gunicorn's gevent worker)
        # has done so, and its locks and conditions are green. Until then nothing here
        # touches the parent's pipeline, whose locks a parent thread may have held.

    def _current(self) -> Core:
        """This process's pipeline, started; built first in a forked child."""
        core = self._holder.core
        if core.pid != os.getpid():
            _lifecycle.check_fork()  # a fork nobody told us of (uWSGI forks from C)
            with self._lock:
                core = self._holder.core
                if core.pid != os.getpid():
                    self._holder.core = core = self._new_core()
        if not core.started:
            core.start()
        return core

    # -- the public surface ----------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The options in effect (the API key is redacted from its repr)."""
        return self._config

    def track(
        self,
        identify_id: Union[str, int],
        event_name: str,
        *,
        attributes: Optional[Mapping[str, Any]] = None,
        user_type: Union[UserType, str] = "USER",
        account_id: Optional[str] = None,
        property_key: Optional[str] = None,
        date: Any = None,
        event_id: Optional[str] = None,
        session_id: Optional[str] = None,
        event_type: Optional[str] = None,
        global_context: Optional[Mapping[str, Any]] = None,
        url: Optional[str] = None,
        referrer: Optional[str] = None,
        remote_host: Optional[str] = None,
    ) -> Optional[str]:
        """Validate and queue one event; returns its id, or None when it was dropped.

        Raises ValidationError (naming the field) for bad input, and QueueFullError with
        overflow "raise" (or "block" past block_timeout).
        """
        core = self._holder.core
        if core.pid != os.getpid() or not core.started:
            core = self._current()
        event = make_event(
            self._product_key,
            self._now_ms,
            identify_id,
            event_name,
            attributes,
            user_type,
            account_id,
            property_key,
            date,
            event_id,
            session_id,
            event_type,
            global_context,
            url,
            referrer,
            remote_host,
        )
        if core.background:
            dropped = core.buffer.admit(event)
            if core.durable is not None:
                core.durable()
            if dropped is None:
                return event.event_id
            return self._report_drop(core, event, dropped)
        if not self._config.send:
            core.buffer.record_dry_run()
            return event.event_id
        job, dropped = core.buffer.admit_inline(event)
        if dropped is not None:
            self._report_drop(core, event, dropped)
        if job is None:
            return None
        core.sender.run_inline(job)
        return event.event_id

    def _report_drop(self, core: Core, event: CustomEvent, dropped: Dropped) -> Optional[str]:
        if dropped.reason == QUEUE_OVERFLOW:
            core.buffer.noted(QUEUE_OVERFLOW)
            if core.background and not core.pool.alive():
                _warn_no_senders(core)
        full = _FULL.get(dropped.reason)
        if full is not None:
            what, bound = full
            core.outcomes.warnings.warn(
                dropped.reason,
                "%s full (%s=%d, overflow=%r): dropping events; see stats().dropped_by_reason",
                what,
                bound,
                getattr(self._config, bound),
                self._config.overflow.value,
            )
        core.outcomes.dropped((dropped.event,), dropped.reason)
        return event.event_id if dropped.event is not event else None

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every event accepted so far is delivered, failed or dropped.

        Returns True when it is, False when ``timeout`` seconds passed first.
        """
        _check_timeout(timeout)
        deadline = None if timeout is None else Deadline(timeout, self._config.clock.monotonic)
        return self._current().flush(deadline)

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout`` (default ``exit_timeout``), drop what is left (reason
        ``shutdown``, reported to on_error) and stop the senders. Idempotent.

        Returns True when nothing had to be dropped.
        """
        if timeout is None:
            timeout = self._config.exit_timeout
        _check_timeout(timeout)
        deadline = Deadline(timeout, self._config.clock.monotonic)
        core = self._current()  # not under the lock: starting a thread may switch greenlets
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        result = core.finish(deadline, timeout)
        _lifecycle.discard_core(core)
        return result

    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        return self._current().buffer.stats()

    def health(self, *, unhealthy_after: float = UNHEALTHY_AFTER) -> Health:
        """Whether the tracker is delivering, for readiness probes: unhealthy when shut
        down, when no sender thread runs (background mode), or when no request has
        succeeded for more than ``unhealthy_after`` seconds since one failed."""
        if (
            isinstance(unhealthy_after, bool)
            or not isinstance(unhealthy_after, (int, float))
            or not unhealthy_after > 0
        ):
            raise ValueError(
                f"'unhealthy_after' must be a number of seconds > 0 (got {unhealthy_after!r})"
            )
        core = self._current()
        now, pending, last_success, failing_since, paused_until = core.buffer.health_figures()
        senders = core.pool.count()
        failing_for = None if failing_since is None else now - failing_since
        reason: Optional[str] = None
        if self._closed:
            reason = "the tracker is shut down"
        elif core.background and not senders:
            reason = "no sender thread is running"
            _warn_no_senders(core)
        elif failing_for is not None and failing_for > unhealthy_after:
            reason = (
                f"no request has succeeded for {failing_for:.0f}s "
                f"(more than {unhealthy_after:g}s); see stats().last_errors"
            )
        wall = self._config.clock.time()
        return Health(
            healthy=reason is None,
            reason=reason,
            last_success_age=None if last_success is None else now - last_success,
            failing_for=failing_for,
            pending=pending,
            paused_until=wall + (paused_until - now) if paused_until > now else None,
            senders_alive=senders,
        )

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        core = self._holder.core
        pending = core.buffer.pending if core.pid == os.getpid() else 0  # not built yet
        state = "shut down" if self._closed else f"pending={pending}"
        return f"<Tracker {self._config.endpoint} workers={self._config.workers} {state}>"


def _warn_no_senders(core: Core) -> None:
    core.outcomes.warnings.warn(
        "senders",
        "no sender thread is running: events are only sent by flush()/shutdown() (%d pending)",
        core.buffer.pending,
    )


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"'timeout' must be None or a number >= 0 (got {timeout!r})")
