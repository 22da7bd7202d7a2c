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

Other children leave through ``os._exit()``, which skips ``atexit``. multiprocessing's
(every start method; ``concurrent.futures``' workers too) and billiard's run the
finalizers of ``multiprocessing.util`` first (billiard 4 shares that registry; an older
billiard has its own, joined the same way): the exit flush is one of them, registered in
each child once it started (the registry is cleared then). Celery's prefork children
leave from inside the task loop without even those, but send ``worker_process_shutdown``
first: the exit flush listens to it. All of it only for the modules the program imported
itself, found in ``sys.modules``: the tracker imports none of them.
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

# The modules whose finalizers a child runs before os._exit(), with their process module.
_PROCESS_MODULES = (
    ("multiprocessing.util", "multiprocessing.process"),
    ("billiard.util", "billiard.process"),
)
_exit_flush: Optional[Callable[[], None]] = None
# Registries joined: kept across a fork, like the registries themselves (a spawned child
# starts anew, with new ones).
_after_fork_joined: set[int] = set()
_finalizers: dict[int, Any] = {}  # id(finalizer registry) -> our Finalize in it
_celery_joined = False


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


# -- children that leave through os._exit() -----------------------------------------------


def hook_child_exits(flush: Callable[[], None]) -> None:
    """Have ``flush`` run in children that leave through ``os._exit()``: called when a
    tracker is registered and after a fork; idempotent, cheap, and a no-op in a process
    that imported neither multiprocessing, billiard nor Celery."""
    global _exit_flush
    _exit_flush = flush
    for util_name, process_name in _PROCESS_MODULES:
        util = sys.modules.get(util_name)
        if util is None:
            continue
        registry = getattr(util, "_afterfork_registry", None)
        if registry is not None and id(registry) not in _after_fork_joined:
            # Run in every child this module starts, after it cleared the finalizers it
            # inherited: whatever the start method, and before the child's own code.
            _after_fork_joined.add(id(registry))
            util.register_after_fork(_TOKEN, _child_started)
        if _started_child(sys.modules.get(process_name)):
            _add_finalizer(util)  # a tracker built in a child already running
    _join_celery()


class _Token:
    """A weak-referenceable key for the after-fork registries."""


_TOKEN = _Token()


def _child_started(_: object) -> None:
    for util_name, _process in _PROCESS_MODULES:
        util = sys.modules.get(util_name)
        if util is not None:
            _add_finalizer(util)
    _join_celery()


def _started_child(process: Optional[ModuleType]) -> bool:
    """True in a multiprocessing or billiard child whose process object runs: it will
    leave through the finalizers (a spawned child importing its modules is not one yet)."""
    if process is None:
        return False
    try:
        return process.current_process()._parent_pid is not None
    except Exception:  # a release that changed its internals: the after-fork hook remains
        return False


def _add_finalizer(util: ModuleType) -> None:
    """Our Finalize in ``util``'s registry, unless one is already there (billiard 4 shares
    multiprocessing's registry; a forked child inherits the parent's until it starts)."""
    registry = getattr(util, "_finalizer_registry", None)
    if registry is None:
        return
    ours = _finalizers.get(id(registry))
    if ours is not None and ours.still_active():
        return
    # Before the finalizers of queues and pipes (priorities 10 and below): the events go
    # first, while everything still works.
    _finalizers[id(registry)] = util.Finalize(None, _run_exit_flush, exitpriority=100)


def _run_exit_flush(**_: object) -> None:
    if _exit_flush is not None:
        _exit_flush()


def _join_celery() -> None:
    """Celery's prefork children end in billiard's worker loop, which calls ``os._exit``
    right after sending ``worker_process_shutdown``: flush on that signal (connected once;
    a forked child inherits the connection)."""
    global _celery_joined
    signals = sys.modules.get("celery.signals")
    if signals is None or _celery_joined:
        return
    _celery_joined = True
    try:
        signals.worker_process_shutdown.connect(
            _run_exit_flush, weak=False, dispatch_uid="px-tracker-exit-flush"
        )
    except Exception:  # a Celery that changed its signals: say so, build the tracker
        logger.warning(
            "could not connect to Celery's worker_process_shutdown: events still queued "
            "when a prefork child ends are lost unless flush() is called in the task",
            exc_info=True,
        )
