"""``tracker serve``: FakePX in the foreground, for local development."""

from __future__ import annotations

import argparse
import threading
from types import FrameType
from typing import TYPE_CHECKING, Optional

from tracker.cli._common import (
    EXIT_OK,
    CliError,
    Command,
    add_fault_options,
    add_secret,
    fault_options,
    logger,
    on_stop_signals,
    port,
    retry_after,
)

if TYPE_CHECKING:
    from tracker.testing import RecordedRequest


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument(
        "--port", type=port, default=8080, help="0 picks a free one (default: %(default)s)"
    )
    serve.add_argument("--api-key", metavar="KEY", help="the only key accepted (default: any key)")
    add_fault_options(serve, fail_rate=0.0, rate_limit=0.0, latency=0.0, jitter=0.0, drop_rate=0.0)
    serve.add_argument(
        "--retry-after",
        type=retry_after,
        default=1.0,
        metavar="SECONDS|none|date",
        help="Retry-After of a 429 (default: 1)",
    )
    serve.add_argument(
        "-v", "--verbose", action="count", default=0, help="one log line per request"
    )


class _RequestLog:
    """Counts what ``tracker serve`` answered, and logs each request with -v."""

    def __init__(self, verbose: bool) -> None:
        self._lock = threading.Lock()
        self._verbose = verbose
        self.requests = 0
        self.accepted = 0

    def __call__(self, record: RecordedRequest) -> None:
        with self._lock:
            self.requests += 1
            if record.status is not None and 200 <= record.status < 300:
                self.accepted += 1
        if not self._verbose:
            return
        body = record.body
        name = body.get("eventName") if isinstance(body, dict) else None
        status = "dropped" if record.status is None else str(record.status)
        took = (record.answered_at - record.arrived_at) * 1000
        logger.info("%s %s %s %s (%.0f ms)", record.method, record.path, status, name or "-", took)


def run(args: argparse.Namespace) -> int:
    # The testing kit is imported by the commands that run it, never at import of the CLI.
    from tracker.testing import FakePX  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():
        # Ctrl-C and SIGTERM are what stop it, and only the main thread receives them.
        raise CliError("serve runs in the main thread only: signals are what stop it")
    if args.api_key:
        add_secret(args.api_key)
    log = _RequestLog(bool(args.verbose))
    px = FakePX(
        api_key=args.api_key,
        port=args.port,
        host=args.host,
        retry_after=args.retry_after,
        on_request=log,
        **fault_options(args),
    )
    try:
        px.start()
    except OSError as exc:
        hint = "; --port 0 picks a free port" if args.port else ""
        raise CliError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}{hint}"
        ) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    try:
        with on_stop_signals(on_signal):
            keys = "only the --api-key key" if args.api_key else "any API key"
            print(f"FakePX listening on {px.url} (accepting {keys})", flush=True)
            print(f"  export PX_BASE_URL={px.url}", flush=True)
            print("Ctrl-C to stop.", flush=True)
            while not stop.wait(0.5):
                px.clear()  # FakePX records every request: a server left running must not grow
    finally:
        px.stop()
    print(f"stopped: {log.requests} requests, {log.accepted} events accepted", flush=True)
    return EXIT_OK


COMMAND = Command(
    name="serve",
    help="run FakePX in the foreground for local development",
    description=(
        "Answer POST /v1/events/custom like PX, with optional faults. "
        "Point PX_BASE_URL at the printed URL. Ctrl-C stops it."
    ),
    add_arguments=add_arguments,
    run=run,
)
