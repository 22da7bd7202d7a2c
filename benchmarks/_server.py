"""Loopback servers for the benchmarks, run in their own process so that their CPU time
does not share the client's GIL.

    python -m benchmarks._server fakepx [--rate-limit R] [--latency S] [--retry-after V|none]
    python -m benchmarks._server sink

The first stdout line is the port. Then the server reads one command per stdin line and
answers one JSON line on stdout:

- ``stats``: ``{"requests": n, "statuses": {"201": n, ...}, "events": n, "unique_events": n}``
  (``events``: accepted event bodies; the sink counts requests and bytes only); FakePX
  adds ``accepted_span_s``, the time from the first to the last arrival of a request it
  answered 2xx (0 for fewer than two),
- ``clear``: forget what was recorded (answers ``{}``),
- ``quit`` (or EOF): stop.

``fakepx`` is ``tracker.testing.FakePX`` unchanged; ``sink`` is a minimal keep-alive
HTTP/1.1 server answering every POST with 200 and a small JSON body, for the Segment and
PostHog clients (which post batches elsewhere than PX's path).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

_SINK_BODY = b'{"status":"Ok","status_code":200}'


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        super().__init__(("127.0.0.1", 0), _SinkHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _SinkServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        with self.server.lock:
            self.server.requests += 1
            self.server.bytes += len(body)
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(_SINK_BODY)}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + _SINK_BODY)

    do_GET = do_PUT = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_sink() -> tuple[int, Callable[[], dict[str, Any]], Callable[[], None]]:
    server = _SinkServer()
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()

    def stats() -> dict[str, Any]:
        with server.lock:
            return {
                "requests": server.requests,
                "statuses": {"200": server.requests},
                "bytes": server.bytes,
            }

    def clear() -> None:
        with server.lock:
            server.requests = 0
            server.bytes = 0

    return int(server.server_address[1]), stats, clear


def _serve_fakepx(
    rate_limit: Optional[float], latency: float, retry_after: Optional[str]
) -> tuple[int, Callable[[], dict[str, Any]], Callable[[], None]]:
    from tracker.testing import FakePX  # noqa: PLC0415 (the sink does not need it)

    px = FakePX(rate_limit=rate_limit, latency=latency, retry_after=retry_after).start()

    def stats() -> dict[str, Any]:
        requests = px.requests
        events = px.events
        statuses = Counter(str(r.status) for r in requests)
        accepted = [r.arrived_at for r in requests if r.status is not None and r.status < 300]
        return {
            "accepted_span_s": max(accepted) - min(accepted) if len(accepted) > 1 else 0.0,
            "requests": len(requests),
            "statuses": dict(statuses),
            "events": len(events),
            "unique_events": len({e.get("eventId") for e in events}),
        }

    return px.port, stats, px.clear


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._server")
    parser.add_argument("kind", choices=("fakepx", "sink"))
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument(
        "--retry-after", default="1", help="Retry-After on FakePX's 429s; 'none': no header"
    )
    args = parser.parse_args(argv)
    retry_after = None if args.retry_after == "none" else args.retry_after
    if args.kind == "sink":
        port, stats, clear = _serve_sink()
    else:
        port, stats, clear = _serve_fakepx(args.rate_limit, args.latency, retry_after)
    print(port, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            print(json.dumps(stats()), flush=True)
        elif command == "clear":
            clear()
            print("{}", flush=True)
        elif command == "quit":
            break
        else:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
