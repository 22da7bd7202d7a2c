"""Every live tracker of the process: flushed at exit within one deadline, rebuilt after fork.

The registry holds trackers and their pipelines weakly. A Tracker nobody references is
collected; its pipeline keeps sending what it holds (its sender threads keep it alive)
and ends when nothing is left, so code that builds a Tracker per job does not pile up
threads. At exit, every pipeline still alive is flushed, all against one real-time
deadline: ``exit_timeout`` bounds the whole exit however many trackers there are, and a
test's fake clock (which nothing advances at exit) cannot hold the process.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable

from tracker import _hosts
from tracker._clock import Deadline

if TYPE_CHECKING:
    from tracker._core import Core

logger = logging.getLogger("tracker")


class Rebuildable:
    """What the registry needs of a Tracker: a new pipeline in a forked child."""

    def _after_fork(self) -> None:
        raise NotImplementedError


_trackers: weakref.WeakSet[Rebuildable] = weakref.WeakSet()
_cores: weakref.WeakSet[Core] = weakref.WeakSet()
# Pipelines of collected Trackers that may still hold events: kept (strongly) for the
# exit flush, and let go once settled, at the next orphaning.
_orphans: set[Core] = set()
_lock = threading.Lock()
_pid = os.getpid()
_fork_hooks: list[Callable[[], None]] = []
_exit_hooks: list[Callable[[], None]] = []
_uwsgi_hooked = False
# When this process's exit flush began, (pid, monotonic): it may be called more than once
# (a multiprocessing child runs its finalizers, then atexit when it was spawned), and
# every call counts from the first.
_exit_began = (0, 0.0)


def register(tracker: Rebuildable) -> None:
    global _uwsgi_hooked
    with _lock:
        _trackers.add(tracker)
    _forget_settled_orphans()
    _hosts.hook_child_exits(shutdown_all_at_exit)
    if not _uwsgi_hooked and _hosts.uwsgi() is not None:
        _uwsgi_hooked = True
        # uWSGI forks from C: rebuild in each worker as soon as it is born, so that the
        # one that claims what the master held sends it without waiting for a request.
        _hosts.install_uwsgi_post_fork(check_fork)


def add_core(core: Core) -> None:
    with _lock:
        _cores.add(core)


def discard_core(core: Core) -> None:
    with _lock:
        _cores.discard(core)


def keep_orphan(core: Core) -> None:
    """``core``'s Tracker was collected: keep the pipeline for the exit flush while it
    holds events. Called from a finalizer, which may run inside any locked section of
    any thread: it takes no lock (a set's add is atomic); ``register`` lets go of the
    orphans that are settled."""
    _orphans.add(core)


def _forget_settled_orphans() -> None:
    for old in list(_orphans):
        if old.finished or old.buffer.pending == 0:
            _orphans.discard(old)


def on_fork(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, before the trackers rebuild."""
    _fork_hooks.append(hook)


def on_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit after the pipelines were finished (the spool closes its
    files there, also those of trackers that do not flush at exit)."""
    _exit_hooks.append(hook)


def shutdown_all_at_exit() -> None:
    """Finish every live pipeline that flushes at exit, against one real-time deadline
    per tracker, all counted from the process's first call (atexit, or the exit hook of
    a child that leaves through ``os._exit``); then run the exit hooks."""
    try:
        _finish_all()
    finally:
        for hook in _exit_hooks:
            try:
                hook()
            except Exception:
                logger.exception("exit hook failed")


def _finish_all() -> None:
    global _exit_began
    check_fork()
    if _exit_began[0] != os.getpid():
        _exit_began = (os.getpid(), time.monotonic())
    start = _exit_began[1]
    with _lock:
        alive = set(_cores) | set(_orphans)
        cores = [core for core in alive if core.config.flush_at_exit and not core.finished]
    if not cores:
        return
    for core in cores:
        core.close()  # nothing new while the others flush
    for core in cores:
        timeout = core.config.exit_timeout
        deadline = Deadline(max(0.0, start + timeout - time.monotonic()))
        try:
            core.finish(deadline, timeout)
        except Exception:
            logger.exception("exit flush failed")


def check_fork() -> bool:
    """Rebuild after a fork that our hook did not see (a C-level fork, as uWSGI's).
    True when this call did it."""
    if os.getpid() == _pid:
        return False
    _after_fork_in_child()
    return True


def _after_fork_in_child() -> None:
    global _lock, _pid
    _lock = threading.Lock()  # may have been held by a parent thread at the fork
    if _pid == os.getpid():
        return
    _pid = os.getpid()
    _cores.clear()  # the parent's: its queue is the parent's to send
    _orphans.clear()
    for hook in _fork_hooks:
        hook()
    for tracker in list(_trackers):
        tracker._after_fork()  # senders start on the child's first use
    # multiprocessing's, billiard's and Celery's children leave through os._exit(),
    # which skips atexit: have their own exit hooks flush us too.
    _hosts.hook_child_exits(shutdown_all_at_exit)


atexit.register(shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
