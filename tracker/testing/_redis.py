"""A real ``redis-server`` on a free loopback port, for the fleet limiter's tests and demo.

No persistence (``--save ''``, ``--appendonly no``): a restart empties it, as a failover to
a fresh replica would. ``restart()`` comes back on the same port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Optional


def redis_server_path() -> Optional[str]:
    """Where ``redis-server`` is (Debian's package puts it in /usr/bin), or None."""
    return shutil.which("redis-server") or shutil.which("/usr/sbin/redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``with RedisServer() as r: r.url``; ``stop()``, ``start()``, ``restart()``."""

    def __init__(self, port: Optional[int] = None) -> None:
        path = redis_server_path()
        if path is None:
            raise RuntimeError("redis-server is not installed (Debian: apt install redis-server)")
        self._path = path
        self.port = port or _free_port()
        self._dir = tempfile.mkdtemp(prefix="px-redis-")
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        command = [self._path, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self._dir]
        command += ["--protected-mode", "no", "--loglevel", "warning"]
        self._process = subprocess.Popen(  # noqa: S603 - our own command line
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start (port {self.port} in use?)")
            if self._answers():
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()  # no persistence, nothing to save: as abrupt as a crash
        process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> Any:
        """A redis-py client of this server (redis-py must be installed)."""
        import redis  # noqa: PLC0415

        return redis.Redis(host="127.0.0.1", port=self.port, db=0)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<RedisServer 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"
