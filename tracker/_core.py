"""One process's pipeline behind a Tracker: buffer, pacer, store, transport, senders."""

from __future__ import annotations

import logging
import os
import threading
from importlib import metadata
from typing import Callable, Optional, Union

import requests

from tracker import _hosts, _lifecycle
from tracker._buffer import Buffer
from tracker._callbacks import Outcomes, Warnings
from tracker._clock import Deadline
from tracker._config import Config
from tracker._counters import SHUTDOWN
from tracker._pacing import LocalPacer, Pacer
from tracker._spool import SpoolStore
from tracker._store import MemoryStore
from tracker._transport import build_transport
from tracker._workers import Sender, WorkerPool

logger = logging.getLogger("tracker")

try:
    VERSION = metadata.version("px-tracker")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0+unknown"

USER_AGENT = f"px-tracker/{VERSION} python-requests/{requests.__version__}"


class Core:
    """Built once per process per Tracker: at construction, and again in a forked child,
    where the parent's locks may have been held mid-operation, its threads do not exist
    and its queue is the parent's to send."""

    def __init__(self, config: Config, warnings: Warnings) -> None:
        self.config = config
        self.pid = os.getpid()
        self.lock = threading.RLock()  # start and finish, one at a time
        self.background = config.send and not config.sync_mode
        store: Union[MemoryStore, SpoolStore]
        self.spool: Optional[SpoolStore]
        # A dry run (send=False) neither spools nor sends what earlier processes left.
        if config.spool is not None and self.background:
            store = self.spool = SpoolStore(config)
        else:
            store = MemoryStore(config.max_queue_size)
            self.spool = None
        pacer: Pacer
        if config.limiter is None:
            pacer = LocalPacer(config.rate_limit, config.workers)
        else:
            # A new client per process (Core is rebuilt in a forked child): no connection
            # is shared with the parent.
            from tracker._fleet import RedisPacer  # noqa: PLC0415

            pacer = RedisPacer(config)
        self.buffer = buffer = Buffer(config, pacer, store)
        # Called by track() after admission: with spool_interval=0, wait for the commit.
        # (and with any interval when the spool's writer lags far behind).
        self.durable: Optional[Callable[[], None]] = None
        self.outcomes = Outcomes(config, warnings)
        self.transport = build_transport(config, USER_AGENT, config.workers + 2)
        self.sender = Sender(config, buffer, self.transport, self.outcomes)
        self.sender.written = pacer.written
        self.pool = WorkerPool(buffer, self.sender, config.workers)
        buffer.overflow.may_block = self.pool.not_on_worker_thread
        self.started = False
        self.finished = False
        self.claim: Optional[_hosts.Claim] = None  # events held in a uWSGI master

    def start(self) -> None:
        """Start the first sender (eagerly: Python 3.12+ refuses new threads at exit).
        Not in a uWSGI master: what it tracks waits for a worker (tracker/_hosts.py), and
        ``started`` stays False so that every track() there looks again."""
        with self.lock:
            if not self.started and not self.finished and self.background:
                if _hosts.in_uwsgi_master():
                    self._hold()
                    return
                if self.claim is not None:
                    # Held while uWSGI loaded the app here; this process is a worker now
                    # (a server without --master): it sends them unless a sibling did.
                    claim, self.claim = self.claim, None
                    if not claim.take():
                        self.buffer.hand_over()
                if self.spool is not None:
                    self.spool.open(self.buffer)
                    self.durable = self.spool.admitted
                self.pool.start()
                _hosts.warn_if_threads_disabled()
            self.started = True

    def _hold(self) -> None:
        if self.claim is None:
            self.claim = _hosts.Claim()
        elif self.claim.taken:  # a worker took over what was held so far
            self.buffer.hand_over()
            self.claim = _hosts.Claim()

    def take_over(self, parent: Core) -> None:
        """In a uWSGI worker just forked: send what the master held, when this worker is
        the one that claims it (exactly one does)."""
        claim = parent.claim
        if claim is None or parent.started or not claim.take():
            return
        self.start()
        self.buffer.adopt(parent.buffer.hand_over())

    def flush(self, deadline: Optional[Deadline]) -> bool:
        mark = self.buffer.mark()
        pool = self.pool
        if self.background and (pool.owns_current_thread() or not pool.alive()):
            # A callback on a sender thread must not wait for itself, and with no threads
            # (refused at interpreter exit) somebody has to send: this thread does.
            return self.sender.drain(mark, deadline)
        return self.buffer.wait_settled(mark, deadline)

    def close(self) -> None:
        """Refuse new events from now on."""
        self.buffer.close()

    def finish(self, deadline: Deadline, timeout: float) -> bool:
        """Flush until ``deadline``, drop what is left (reason ``shutdown``, told to
        on_error) and stop the senders. True when nothing had to be dropped."""
        with self.lock:
            if self.finished:
                return True
            self.finished = True
            self.buffer.close()
            if self.claim is not None and not self.claim.take():
                self.buffer.hand_over()  # a uWSGI worker took them: not ours to send
            self.claim = None
            delivered_all = self.flush(deadline)
            spool = self.spool
            if spool is not None and self.started:
                kept = self.buffer.keep()
                abandoned = []
            else:
                kept = 0
                abandoned = self.buffer.abandon()
            self.buffer.stop()
            if spool is not None:
                # Commit what is queued and release the files for the next process.
                spool.close(max(deadline.left(), 1.0))
            if self.pool.join(deadline):
                self.transport.close()
        if kept:
            assert spool is not None
            logger.warning(
                "shutdown: %d event(s) not delivered within %.1fs stay in the spool %s "
                "for the next process to send",
                kept,
                timeout,
                spool.directory,
            )
        if abandoned:
            logger.warning(
                "shutdown: %d event(s) not settled within %.1fs were dropped",
                len(abandoned),
                timeout,
            )
            self.outcomes.dropped(abandoned, SHUTDOWN)
        return delivered_all and not abandoned and not kept

    def orphan(self) -> None:
        """Nobody holds the Tracker any more: its senders end once nothing is pending, and
        then nothing keeps this pipeline (or its connections) alive but the exit registry,
        which lets it go once it is settled. Not in a forked child that never used the
        Tracker: this pipeline is the parent's there."""
        if self.pid != os.getpid():
            return
        self.buffer.retire_when_idle()
        if self.background and self.buffer.pending:
            _lifecycle.keep_orphan(self)
