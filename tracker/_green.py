"""Green threads: what keeps the tracker right when gevent or eventlet patch the standard
library after it was imported.

Patched first, everything the tracker makes is green: its sender threads are greenlets,
its locks and conditions yield to the hub, requests runs over cooperative sockets. A
server that loads the app before its workers patch leaves something behind, though
(``gunicorn -k gevent --preload`` imports the app, so the tracker, requests and ssl, in
the master; each worker patches after the fork):

- a ``threading.local`` made at import is one object for every greenlet of the process
  (they all run on one OS thread), so "am I a sender thread" would be true everywhere
  once one sender had run: ``flush()`` and the exit flush would send on the caller's
  greenlet instead of waiting with a deadline. ``ThreadLocal`` makes a new one once
  ``threading.local`` was replaced, so per-thread state stays per green thread.

Locks made before patching stay native; that is harmless here, since no code of ours
switches greenlets while holding one (no I/O under a lock, and a Condition's wait
releases its lock before it parks on a green waiter).
"""

from __future__ import annotations

import threading


class ThreadLocal:
    """A ``threading.local`` that follows monkey-patching: ``get()`` is the local of the
    current (green) thread. It is replaced only when ``threading.local`` was (after a
    patch, where threads are cooperative, so no two threads race here)."""

    __slots__ = ("_kind", "_local")

    def __init__(self) -> None:
        self._kind = threading.local
        self._local = self._kind()

    def get(self) -> threading.local:
        kind = threading.local
        if kind is not self._kind:
            self._kind = kind
            self._local = kind()
        return self._local
