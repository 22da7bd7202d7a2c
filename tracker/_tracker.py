"""The Tracker: a thin front wiring event model, buffer, workers and transport, plus its
lifecycle (exit flush, fork) and the module-level default tracker."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, Optional, Union

import requests

from tracker._buffer import Buffer, Dropped
from tracker._clock import Clock
from tracker._config import UNSET, Config, ErrorCallback, OverflowPolicy, SuccessCallback, _Unset
from tracker._counters import QUEUE_OVERFLOW, SHUTDOWN, Stats
from tracker._event import CustomEvent, UserType, make_event
from tracker._transport import Transport
from tracker._workers import Sender, WorkerPool, call_guarded
from tracker.errors import DeliveryError

logger = logging.getLogger("tracker")

try:
    VERSION = metadata.version("px-tracker")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0+unknown"

USER_AGENT = f"px-tracker/{VERSION} python-requests/{requests.__version__}"


class Tracker:
    """Sends PX custom events from background threads; see the README for the contract.

    ``track()`` validates on the caller's thread and queues; daemon workers deliver with
    retries, pacing and 429 pauses; ``flush()`` waits; ``shutdown()`` (also at exit)
    flushes within a deadline and drops, counted, whatever is left.
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
        workers: Union[int, _Unset] = UNSET,
        rate_limit: Union[Optional[float], _Unset] = UNSET,
        max_retries: Union[int, _Unset] = UNSET,
        max_retry_time: Union[float, _Unset] = UNSET,
        backoff_base: Union[float, _Unset] = UNSET,
        backoff_max: Union[float, _Unset] = UNSET,
        max_retry_after: Union[float, _Unset] = UNSET,
        default_retry_after: Union[float, _Unset] = UNSET,
        timeout: Union[float, _Unset] = UNSET,
        exit_timeout: Union[float, _Unset] = UNSET,
        flush_at_exit: Union[bool, _Unset] = UNSET,
        on_success: Union[Optional[SuccessCallback], _Unset] = UNSET,
        on_error: Union[Optional[ErrorCallback], _Unset] = UNSET,
        sync_mode: Union[bool, _Unset] = UNSET,
        send: Union[bool, _Unset] = UNSET,
        clock: Union[Clock, _Unset] = UNSET,
    ) -> None:
        self._config = Config.from_options(
            {
                "api_key": api_key,
                "product_key": product_key,
                "region": region,
                "base_url": base_url,
                "allow_insecure_http": allow_insecure_http,
                "max_queue_size": max_queue_size,
                "overflow": overflow,
                "block_timeout": block_timeout,
                "workers": workers,
                "rate_limit": rate_limit,
                "max_retries": max_retries,
                "max_retry_time": max_retry_time,
                "backoff_base": backoff_base,
                "backoff_max": backoff_max,
                "max_retry_after": max_retry_after,
                "default_retry_after": default_retry_after,
                "timeout": timeout,
                "exit_timeout": exit_timeout,
                "flush_at_exit": flush_at_exit,
                "on_success": on_success,
                "on_error": on_error,
                "sync_mode": sync_mode,
                "send": send,
                "clock": clock,
            }
        )
        config = self._config
        self._product_key = config.product_key
        self._now_ms = config.clock.time_ms
        self._on_error = config.on_error
        self._background = config.send and not config.sync_mode
        self._closed = False
        self._last_drop_log = -1e9
        self._build()
        self._prepare()
        _register(self)

    def _build(self) -> None:
        """A fresh pipeline for this process: queue, counters, connections, threads (not
        started yet). Run at construction and again in a forked child, where the parent's
        locks may have been held mid-operation, its threads do not exist and its queue is
        the parent's to send."""
        config = self._config
        self._lifecycle = threading.RLock()
        self._buffer = Buffer(config)
        self._transport = Transport(config, USER_AGENT, config.workers + 2)
        self._sender = Sender(config, self._buffer, self._transport)
        self._pool = WorkerPool(self._buffer, self._sender, config.workers)
        self._buffer.may_block = self._pool.not_on_worker_thread
        self._pid = os.getpid()
        self._ready_pid = 0  # == os.getpid() once this process may track
        if self._closed:
            self._buffer.close()
            self._buffer.stop()

    def _prepare(self) -> None:
        """Make the tracker usable in this process: rebuild after a fork (when our fork
        hook did not run), start the workers."""
        with self._lifecycle:
            pid = os.getpid()
            if self._pid != pid:
                self._build()
            if self._ready_pid == pid:
                return
            if self._background and not self._closed:
                self._pool.start()  # eagerly: Python 3.12+ refuses new threads at exit
            self._ready_pid = pid

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
        if self._ready_pid != os.getpid():
            self._prepare()
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
        if self._background:
            dropped = self._buffer.admit(event)
            if dropped is None:
                return event.event_id
            return self._report_drop(event, dropped)
        if not self._config.send:
            self._buffer.record_dry_run()
            return event.event_id
        job, dropped = self._buffer.admit_inline(event)
        if dropped is not None:
            self._report_drop(event, dropped)
        if job is None:
            return None
        self._sender.run_inline(job)
        return event.event_id

    def _report_drop(self, event: CustomEvent, dropped: Dropped) -> Optional[str]:
        now = time.monotonic()
        if dropped.reason == QUEUE_OVERFLOW and now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            logger.warning(
                "queue full (max_queue_size=%d, overflow=%r): dropping events; "
                "see stats().dropped_by_reason",
                self._config.max_queue_size,
                self._config.overflow.value,
            )
        if self._on_error is not None:
            error = DeliveryError(dropped.reason, dropped.event.event_id)
            call_guarded("on_error", self._on_error, dropped.event, error)
        return event.event_id if dropped.event is not event else None

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every event accepted so far is delivered, failed or dropped.

        Returns True when it is, False when ``timeout`` seconds passed first.
        """
        deadline = self._deadline("timeout", timeout)
        if self._ready_pid != os.getpid():
            self._prepare()
        mark = self._buffer.mark()
        if self._background and (self._pool.owns_current_thread() or not self._pool.alive()):
            # A callback on a worker thread must not wait for itself, and with no threads
            # (refused at interpreter exit) somebody has to send: this thread does.
            return self._sender.drain(mark, deadline)
        return self._buffer.wait_settled(mark, deadline)

    def _deadline(self, name: str, timeout: Optional[float]) -> Optional[float]:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"'{name}' must be None or a number >= 0 (got {timeout!r})")
        return self._config.clock.monotonic() + timeout

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout`` (default ``exit_timeout``), drop what is left (reason
        ``shutdown``, reported to on_error) and stop the workers. Idempotent.

        Returns True when nothing had to be dropped.
        """
        if timeout is None:
            timeout = self._config.exit_timeout
        self._deadline("timeout", timeout)
        with self._lifecycle:
            if self._pid != os.getpid():
                self._build()  # forked without our hook: shut down the child's own state
            if self._closed:
                return True
            self._closed = True
            self._buffer.close()
            delivered_all = self.flush(timeout)
            abandoned = self._buffer.abandon()
            self._buffer.stop()
            if abandoned:
                logger.warning(
                    "shutdown: %d event(s) not settled within %.1fs were dropped",
                    len(abandoned),
                    timeout,
                )
                if self._on_error is not None:
                    for event in abandoned:
                        error = DeliveryError(SHUTDOWN, event.event_id)
                        call_guarded("on_error", self._on_error, event, error)
            if self._pool.join(0.5):
                self._transport.close()
            _unregister(self)
            return delivered_all and not abandoned

    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        if self._pid != os.getpid():
            self._prepare()
        return self._buffer.stats()

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
        state = "shut down" if self._closed else f"pending={self._buffer.pending}"
        return f"<Tracker {self._config.endpoint} workers={self._config.workers} {state}>"


# -- every live tracker: flushed at exit, rebuilt in a forked child ---------------------------

# Strong references on purpose: a tracker with events still queued must not be collected
# before the exit flush has sent them. shutdown() removes it.
_live: set[Tracker] = set()
_live_lock = threading.Lock()


def _register(tracker: Tracker) -> None:
    with _live_lock:
        _live.add(tracker)


def _unregister(tracker: Tracker) -> None:
    with _live_lock:
        _live.discard(tracker)


def _shutdown_all_at_exit() -> None:
    with _live_lock:
        trackers = [t for t in _live if t.config.flush_at_exit]
    for tracker in trackers:
        try:
            tracker.shutdown(tracker.config.exit_timeout)
        except Exception:
            logger.exception("exit flush failed")


def _after_fork_in_child() -> None:
    global _live_lock, _default_lock
    _live_lock = threading.Lock()
    _default_lock = threading.Lock()
    for tracker in list(_live):
        tracker._build()  # workers start on the child's first use
    # multiprocessing's children leave through os._exit(), which skips atexit: have its
    # own exit hook (a Finalize, registered once the child has cleared inherited ones)
    # flush us too.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.register_after_fork(_MP_TOKEN, _register_mp_exit_flush)


class _Token:
    """A weak-referenceable key for multiprocessing's after-fork registry."""


_MP_TOKEN = _Token()


def _register_mp_exit_flush(_: object) -> None:
    mp_util = sys.modules["multiprocessing.util"]
    mp_util.Finalize(None, _shutdown_all_at_exit, exitpriority=100)


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the module-level default tracker -------------------------------------------------------

_default: Optional[Tracker] = None
_default_lock = threading.Lock()


def configure(**options: Any) -> Tracker:
    """Set up the process-wide tracker used by ``tracker.track()`` and friends.

    A second call shuts the previous one down (flushing it) and replaces it.
    """
    global _default
    new = Tracker(**options)
    with _default_lock:
        old, _default = _default, new
    if old is not None:
        old.shutdown()
    return new


def default_tracker() -> Tracker:
    """The process-wide tracker, built from the environment on first use."""
    global _default
    current = _default
    if current is None:
        with _default_lock:
            if _default is None:
                _default = Tracker()
            current = _default
    return current


def track(identify_id: Union[str, int], event_name: str, **fields: Any) -> Optional[str]:
    """``track()`` on the process-wide tracker (see ``Tracker.track``)."""
    return default_tracker().track(identify_id, event_name, **fields)


def flush(timeout: Optional[float] = None) -> bool:
    """``flush()`` on the process-wide tracker."""
    return default_tracker().flush(timeout)


def shutdown(timeout: Optional[float] = None) -> bool:
    """``shutdown()`` on the process-wide tracker; True when there is none."""
    current = _default
    return True if current is None else current.shutdown(timeout)


def stats() -> Stats:
    """``stats()`` of the process-wide tracker."""
    return default_tracker().stats()
