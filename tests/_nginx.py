"""A real nginx for tests: limit_req keyed on the API key, before FakePX or a 201 of its own.

    def test_something(nginx):                       # the fixture below: a factory
        server = nginx(rate=200, burst=20, nodelay=True, retry_after=1)
        ...  # send to server.url; server.records() is nginx's own access log

Each server runs ``nginx -p DIR -c DIR/nginx.conf`` with everything (config, pid, logs,
temp paths) in its own temporary directory, as one process (``daemon off;
master_process off;``: nothing to switch to another user, also when run as root), on a
free loopback port. Without nginx installed (Debian: ``apt-get install -y nginx``) the
tests that use the fixture are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import pytest

INSTALL_HINT = "nginx is not installed (Debian/Ubuntu: apt-get install -y nginx)"
CREATED = '{"body":{},"statusCode":"CREATED","statusCodeValue":201}'
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def find_nginx() -> Optional[str]:
    """The nginx binary: on PATH, else where Debian puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass(frozen=True)
class Logged:
    """One line of nginx's access log: when the answer was logged (epoch seconds, ms
    resolution), its status, limit_req's verdict (PASSED, DELAYED, REJECTED; "-" for a
    request without a key) and nginx's request time in seconds (a delay included)."""

    at: float
    status: int
    limit_req: str
    request_time: float

    @property
    def arrived(self) -> float:
        return self.at - self.request_time


# The log never holds the API key: no headers, no request line.
_LOG_FORMAT = "'$msec $status $limit_req_status $request_time'"

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
{user}pid {dir}/nginx.pid;
lock_file {dir}/nginx.lock;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format px {log_format};
    access_log {dir}/access.log px;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests {keepalive_requests};
    limit_req_zone $http_x_aptrinsic_api_key zone=px:1m rate={rate}r/s;
    limit_req_status 429;
    limit_req_log_level {log_level};
    # Retry-After on limit_req's own 429s only (an empty value adds no header).
    map $limit_req_status $px_retry_after {{ REJECTED "{retry_after}"; default ""; }}
{upstream}    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location / {{
            limit_req zone=px{burst}{nodelay};
            add_header Retry-After $px_retry_after always;
{answer}        }}
        location @created {{
            default_type application/json;
            return 201 '{created}';
        }}
    }}
}}
"""

_UPSTREAM = """\
    upstream fakepx {{
        server 127.0.0.1:{port};
        keepalive {keepalive};
    }}
"""

# Kept-alive connections to the upstream need HTTP/1.1 and no "Connection: close".
_PROXY = """\
            proxy_pass http://fakepx;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
"""

# `return` runs in the rewrite phase, before limit_req (preaccess); try_files runs after
# it, and its internal redirect to @created is not limited a second time.
_ANSWER = """\
            try_files /.none @created;
"""


@dataclass
class Nginx:
    """One nginx process; ``start()`` returns once it accepts connections, ``stop()``
    ends it and checks that it exited cleanly."""

    binary: str
    directory: Path
    rate: int = 200
    burst: int = 0
    nodelay: bool = False
    retry_after: Optional[int] = None
    upstream_port: Optional[int] = None
    upstream_keepalive: int = 32
    keepalive_requests: int = 1000  # nginx's default: a client connection is closed after it
    log_rejections: bool = False  # "limiting requests" lines in error.log
    port: int = field(default=0, init=False)  # chosen free by start()
    process: Optional[subprocess.Popen[bytes]] = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "nginx.conf"

    def config(self) -> str:
        upstream = ""
        if self.upstream_port is not None:
            upstream = _UPSTREAM.format(port=self.upstream_port, keepalive=self.upstream_keepalive)
        return _CONFIG.format(
            # A master process would switch to "nobody"; one process stays who it is, and
            # "user" only names who owns the temp directories it creates as root.
            user="user root;\n" if os.geteuid() == 0 else "",
            dir=self.directory,
            log_format=_LOG_FORMAT,
            keepalive_requests=self.keepalive_requests,
            rate=self.rate,
            log_level="warn" if self.log_rejections else "info",
            retry_after="" if self.retry_after is None else self.retry_after,
            upstream=upstream,
            port=self.port,
            # "burst=0" is refused: no burst is the default.
            burst=f" burst={self.burst}" if self.burst else "",
            nodelay=" nodelay" if self.nodelay else "",
            answer=_PROXY if self.upstream_port is not None else _ANSWER,
            created=CREATED,
        )

    def start(self) -> Nginx:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A free port can be taken by someone else before nginx binds it: try again.
        for _ in range(5):
            self.port = _free_port()
            self.config_path.write_text(self.config())
            if self._launch():
                return self
        raise RuntimeError(f"nginx found no free port:\n{self.error_log()}")

    def _launch(self) -> bool:
        error_log = self.directory / "error.log"
        with contextlib.suppress(FileNotFoundError):
            error_log.unlink()
        command = [self.binary, "-p", str(self.directory), "-c", str(self.config_path)]
        command += ["-e", str(error_log)]  # not the built-in error log path, before the config
        with (self.directory / "output.log").open("wb") as output:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.error_log():
                    return False
                raise RuntimeError(
                    f"nginx exited with {self.process.returncode} at start:\n{self.error_log()}"
                )
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            time.sleep(0.01)
        self._kill()
        raise RuntimeError(f"nginx did not accept connections within {START_TIMEOUT} s")

    def stop(self) -> None:
        """SIGTERM (fast shutdown) and wait; raises unless nginx exited with status 0."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            if process is not None and process.returncode != 0:
                raise RuntimeError(f"nginx had exited with {process.returncode}")
            return
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"nginx did not exit within {STOP_TIMEOUT} s of SIGTERM") from None
        if code != 0:
            raise RuntimeError(f"nginx exited with {code}:\n{self.error_log()}")

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def error_log(self) -> str:
        text = ""
        for name in ("output.log", "error.log"):
            with contextlib.suppress(FileNotFoundError):
                text += (self.directory / name).read_text(errors="replace")
        return text

    def records(self, at_least: int = 0, timeout: float = 5.0) -> list[Logged]:
        """nginx's access log, one entry per answered request, in log order. nginx logs a
        request after its answer went out, so a client can read the answer first: pass
        ``at_least`` to wait (up to ``timeout``) for that many entries."""
        deadline = time.monotonic() + timeout
        while True:
            logged = self._read_access_log()
            if len(logged) >= at_least or time.monotonic() >= deadline:
                return logged
            time.sleep(0.005)

    def _read_access_log(self) -> list[Logged]:
        try:
            text = (self.directory / "access.log").read_text()
        except FileNotFoundError:
            return []
        logged = []
        # A line being written has no newline yet: only whole lines count.
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            at, status, verdict, took = line.split()
            logged.append(Logged(float(at), int(status), verdict, float(took)))
        return logged


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def pipeline(port: int, keys: Sequence[Optional[str]], timeout: float = 10.0) -> list[Answer]:
    """POST one event per key (None: no key header) in a single write on one connection
    and read the answers. nginx takes pipelined requests in one pass of its event loop,
    at one reading of its millisecond clock, so "back to back" here means the same ms."""
    body = b'{"identifyId":"u1","propertyKey":"AP-1","userType":"USER","eventName":"signup"}'
    wire = b""
    for key in keys:
        head = "POST /v1/events/custom HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "Content-Type: application/json\r\n"
        if key is not None:
            head += f"X-APTRINSIC-API-KEY: {key}\r\n"
        wire += f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(wire)
        reader = sock.makefile("rb")
        return [_read_answer(reader) for _ in keys]


def _read_answer(reader: BinaryIO) -> Answer:
    readline = reader.readline
    status = int(readline().split()[1])
    headers: dict[str, str] = {}
    while True:
        line = readline().decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Answer(status, headers, reader.read(length))


@pytest.fixture(name="nginx")
def nginx_fixture(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """A factory: ``nginx(**options)`` starts an :class:`Nginx` with those options
    (``rate``, ``burst``, ``nodelay``, ``retry_after``, ``upstream_port`` for FakePX's
    port, ...); every one started is stopped after the test and must exit cleanly."""
    binary = find_nginx()
    if binary is None:
        pytest.skip(INSTALL_HINT)
    started: list[Nginx] = []

    def start(**options: object) -> Nginx:
        server = Nginx(binary, tmp_path / f"nginx-{len(started)}", **options)  # type: ignore[arg-type]
        server.start()  # on failure it raises, leaving no process behind
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
