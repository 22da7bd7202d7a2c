"""Green threads: what keeps the tracker right when gevent or eventlet patch the standard
library after it was imported.

Patched first, everything the tracker makes is green: its sender threads are greenlets,
its locks and conditions yield to the hub, requests runs over cooperative sockets. A
server that loads the app before its workers patch leaves two things behind, though
(``gunicorn -k gevent --preload`` imports the app, so the tracker, requests and ssl, in
the master; each worker patches after the fork):

- a ``threading.local`` made at import is one object for every greenlet of the process
  (they all run on one OS thread), so "am I a sender thread" would be true everywhere
  once one sender had run: ``flush()`` and the exit flush would send on the caller's
  greenlet instead of waiting with a deadline. ``ThreadLocal`` makes a new one once
  ``threading.local`` was replaced, so per-thread state stays per green thread.
- urllib3 imported ``SSLContext`` from ``ssl`` by name: its contexts are of the original
  class while the ``ssl`` module is patched, and setting up one raises ``RecursionError``
  (gevent's MonkeyPatchWarning says as much), so every HTTPS request failed.
  ``ssl_context()`` builds urllib3 a context of the patched class instead, set up as
  urllib3 sets up its own.

Locks made before patching stay native, and a native lock held by a greenlet that
switches away blocks the hub for good once another greenlet wants it. So a forked child
builds its pipeline on first use, after the host patched (gunicorn's gevent worker
patches after the fork), and the few locks remade at the fork itself are never held
across anything that may switch greenlets: I/O, starting a thread, ``is_alive()``.
"""

from __future__ import annotations

import ssl
import threading
from typing import Callable, Generic, Optional, TypeVar

from urllib3.util import ssl_ as urllib3_ssl

_T = TypeVar("_T")


class _Following(Generic[_T]):
    """What ``threading.<name>()`` made, made again once monkey-patching replaced that
    name: ``get()`` is always of the current kind. Replaced only after a patch, where
    threads are cooperative, so no two threads race here."""

    __slots__ = ("_kind", "_made", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._kind: Callable[[], _T] = getattr(threading, name)
        self._made: _T = self._kind()

    def get(self) -> _T:
        kind: Callable[[], _T] = getattr(threading, self._name)
        if kind is not self._kind:
            self._kind = kind
            self._made = kind()
        return self._made


class ThreadLocal(_Following[threading.local]):
    """A ``threading.local`` that follows monkey-patching: ``get()`` is the local of the
    current (green) thread."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("local")


class Lock(_Following[threading.Lock]):
    """A lock that follows monkey-patching: ``get()`` is a green lock once
    ``threading.Lock`` was replaced, so a greenlet that switches away holding it (starting
    a thread does) does not block the hub for every other greenlet that wants it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("Lock")


def ssl_context() -> Optional[ssl.SSLContext]:
    """A context for urllib3 when ``ssl`` was patched after urllib3 imported it (None
    otherwise: urllib3 makes its own): the patched class, with urllib3's defaults (TLS
    1.2 or later, no compression or session tickets, post-handshake authentication,
    certificates and host names verified; urllib3 loads the CA bundle into it)."""
    current = ssl.SSLContext
    imported = getattr(urllib3_ssl, "SSLContext", None)
    if not isinstance(imported, type) or current is imported:
        return None
    if not issubclass(current, imported):  # not a patch of it (pyOpenSSL's, say)
        return None
    context = current(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    if getattr(context, "post_handshake_auth", None) is not None:
        context.post_handshake_auth = True
    context.hostname_checks_common_name = False
    return context
