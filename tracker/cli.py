"""The ``tracker`` command line: ``demo``, ``send`` (JSON Lines batch upload) and ``serve``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import IO, Any, Callable, Optional, Union

from tqdm import tqdm

from tracker._event import CustomEvent
from tracker._tracker import VERSION, Tracker
from tracker.errors import ConfigError, DeliveryError, ValidationError
from tracker.testing import FakePX, RecordedRequest

logger = logging.getLogger("tracker")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Keys that must never be printed: whatever key this process was given.
_secrets: set[str] = set()


class CliError(Exception):
    """A usage, configuration or input problem: one line on stderr, exit code 2."""


def _redact(text: str) -> str:
    for secret in _secrets:
        if len(secret) >= 4:  # a shorter "key" is no secret, and would mangle every word
            text = text.replace(secret, "***")
    return text


def _error(command: str, message: str) -> None:
    print(_redact(f"tracker {command}: error: {message}"), file=sys.stderr)


def _warn(command: str, message: str) -> None:
    print(_redact(f"tracker {command}: warning: {message}"), file=sys.stderr)


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear a live progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{self.formatTime(record, '%H:%M:%S')} {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                text += f" ({type(error).__name__}: {error})"  # one line, no traceback
            tqdm.write(_redact(text), file=sys.stderr)
        except Exception:
            self.handleError(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str) -> str:
        return time.strftime(datefmt, time.localtime(record.created))


@contextlib.contextmanager
def _logging_to_stderr(level: int) -> Iterator[None]:
    """Show the ``tracker`` logger's records on stderr while a command runs (-v)."""
    handler = _TqdmHandler()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# -- argument types ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (got {text!r})")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in 0..1 (got {text!r})")
    return value


def _rate(text: str) -> float:
    """Requests per second; 0 (or ``off``/``none``) turns the limit off."""
    if text.strip().lower() in ("off", "none"):
        return 0.0
    return _number(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535 (got {value})")
    return value


def _retry_after(text: str) -> Union[float, str, None]:
    word = text.strip().lower()
    if word == "none":
        return None
    if word == "date":
        return "date"
    try:
        return _number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected seconds, 'none' or 'date', got {text!r}"
        ) from None


# -- the parser ----------------------------------------------------------------------------

_SEND_EPILOG = """\
Each line is one JSON object: identifyId, eventName, and optionally propertyKey,
userType, accountId, date (epoch ms or ISO-8601 with a timezone), eventId, sessionId,
eventType, globalContext, attributes, url, referrer, remoteHost (snake_case also works).

Lines that are not valid and events PX does not accept go to the dead-letter file, one
JSON object per line: {"line": N, "reason": "...", "event": {...}} or, for a line that
is not JSON, {"line": N, "reason": "...", "raw": "..."}. Sending a dead-letter file
sends the "event" of each record again.

Progress is kept in a state file (FILE.resume.json): --resume skips every line up to
the last one before which everything was delivered or dead-lettered. After a crash,
lines past that point may be sent twice (at-least-once); give events an eventId so
duplicates can be recognised. If PX refuses the API key before accepting any event,
the run stops at once (exit code 2) and nothing is dead-lettered: fix the key, then
run again with --resume.

exit codes: 0 everything delivered; 1 some lines bad or events not delivered;
2 usage, configuration or unreadable input; 130 interrupted (run again with --resume).
"""


def _add_output_options(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--json", action="store_true", help=f"print the {what} as JSON")
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    command.add_argument(
        "-v", "--verbose", action="count", default=0, help="log 429s and failures (-vv: retries)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker",
        description="Send Gainsight PX custom events, and try the pipeline locally.",
    )
    parser.add_argument("--version", action="version", version=f"tracker (px-tracker) {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline against a local FakePX with faults, and report",
        description=(
            "Track events from several threads into a local FakePX that fails, drops "
            "connections, answers slowly and rate-limits, then report what was delivered. "
            "Exit code 0 only when nothing was lost."
        ),
    )
    demo.add_argument(
        "--events", type=_positive_int, default=2000, metavar="N", help="default: %(default)s"
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=4,
        metavar="N",
        help="producer threads (default: %(default)s)",
    )
    demo.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.05,
        metavar="P",
        help="share of 500s (default: %(default)s)",
    )
    demo.add_argument(
        "--rate-limit",
        type=_rate,
        default=200.0,
        metavar="RPS",
        help="the server's limit in requests/s, 0 for none (default: %(default)s)",
    )
    demo.add_argument(
        "--latency",
        type=_number,
        default=0.02,
        metavar="SECONDS",
        help="server latency (default: %(default)s)",
    )
    demo.add_argument(
        "--jitter",
        type=_number,
        default=0.03,
        metavar="SECONDS",
        help="random extra latency, up to (default: %(default)s)",
    )
    demo.add_argument(
        "--drop-rate",
        type=_fraction,
        default=0.01,
        metavar="P",
        help="share of connections closed without an answer (default: %(default)s)",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed of the server's faults")
    demo.add_argument(
        "--max-retries",
        type=int,
        default=None,
        metavar="N",
        help="the tracker's max_retries (default: the library's)",
    )
    demo.add_argument(
        "--timeout",
        type=_number,
        default=120.0,
        metavar="SECONDS",
        help="give up waiting for delivery after this long (default: %(default)s)",
    )
    _add_output_options(demo, "report")

    send = commands.add_parser(
        "send",
        help="upload a JSON Lines file of events to PX",
        description="Validate and send the events of a JSON Lines file (- for stdin).",
        epilog=_SEND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("file", metavar="FILE", help="JSON Lines file, or - for stdin")
    send.add_argument("--region", help="us, eu or us2 (else PX_REGION, else us)")
    send.add_argument("--base-url", metavar="URL", help="PX host to send to (else PX_BASE_URL)")
    send.add_argument(
        "--local",
        action="store_true",
        help="send to an in-process FakePX instead of PX (no API key needed)",
    )
    keys = send.add_mutually_exclusive_group()
    keys.add_argument("--api-key-file", metavar="PATH", help="read the API key from this file")
    keys.add_argument(
        "--api-key",
        metavar="KEY",
        help="the API key (visible in the process list: prefer --api-key-file or PX_API_KEY)",
    )
    send.add_argument(
        "--product-key",
        metavar="KEY",
        help="propertyKey of lines without one (else PX_PRODUCT_KEY)",
    )
    send.add_argument(
        "--workers", type=int, metavar="N", help="sending threads (else PX_WORKERS, else 16)"
    )
    send.add_argument(
        "--rate-limit",
        type=_rate,
        metavar="RPS",
        help="client pacing in requests/s, 0 for none (else PX_RATE_LIMIT, else 200)",
    )
    send.add_argument(
        "--dead-letter", metavar="PATH", help="default: FILE.dead.jsonl (./stdin.dead.jsonl)"
    )
    send.add_argument(
        "--state", metavar="PATH", help="resume state; default: FILE.resume.json beside FILE"
    )
    send.add_argument(
        "--resume",
        action="store_true",
        help="skip lines an earlier run settled; append to the dead-letter file",
    )
    _add_output_options(send, "summary")

    serve = commands.add_parser(
        "serve",
        help="run FakePX in the foreground for local development",
        description=(
            "Answer POST /v1/events/custom like PX, with optional faults. "
            "Point PX_BASE_URL at the printed URL. Ctrl-C stops it."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument(
        "--port", type=_port, default=8080, help="0 picks a free one (default: %(default)s)"
    )
    serve.add_argument("--api-key", metavar="KEY", help="the only key accepted (default: any key)")
    serve.add_argument(
        "--fail-rate", type=_fraction, default=0.0, metavar="P", help="share of 500s"
    )
    serve.add_argument(
        "--rate-limit", type=_rate, default=0.0, metavar="RPS", help="requests/s before 429s"
    )
    serve.add_argument(
        "--retry-after",
        type=_retry_after,
        default=1.0,
        metavar="SECONDS|none|date",
        help="Retry-After of a 429 (default: 1)",
    )
    serve.add_argument("--latency", type=_number, default=0.0, metavar="SECONDS")
    serve.add_argument("--jitter", type=_number, default=0.0, metavar="SECONDS")
    serve.add_argument(
        "--drop-rate",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="share of connections closed without an answer",
    )
    serve.add_argument("--seed", type=int, default=None)
    serve.add_argument(
        "-v", "--verbose", action="count", default=0, help="one log line per request"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command: Optional[str] = args.command
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = {
        "demo": _demo,
        "send": _send,
        "serve": _serve,
    }[command]
    level = {0: logging.ERROR, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    try:
        with _logging_to_stderr(level):
            return run(args)
    except CliError as exc:
        _error(command, str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        _error(command, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"tracker {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug of ours: one line, never a traceback with the key in it
        _error(command, f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_FAILED


# -- tracker demo --------------------------------------------------------------------------

_DEMO_KEY = "demo-api-key"
_DEMO_PRODUCT = "AP-DEMO00000-1"
_DEMO_EVENTS = ("Report Exported", "Dashboard Viewed", "Invite Sent", "Search", "Signup")


def _percentile(sorted_values: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)


def _demo(args: argparse.Namespace) -> int:
    px = FakePX(
        api_key=_DEMO_KEY,
        fail_rate=args.fail_rate,
        rate_limit=args.rate_limit or None,
        latency=args.latency,
        latency_jitter=args.jitter,
        drop_rate=args.drop_rate,
        seed=args.seed,
    )
    lock = threading.Lock()
    started: dict[str, float] = {}  # event id -> when track() was called
    latencies: list[float] = []

    def on_success(event: CustomEvent) -> None:
        now = time.monotonic()
        with lock:
            latencies.append(now - started[event.event_id])

    options: dict[str, Any] = {}
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    stop = threading.Event()
    with px:
        # Library defaults otherwise (pacing 200/s, backoff, 429 pauses): the point of the
        # demo is to show them coping. "block" because the producers here are a batch
        # that outpaces PX, and a batch should wait for room rather than drop events.
        client = Tracker(
            _DEMO_KEY,
            product_key=_DEMO_PRODUCT,
            base_url=px.url,
            overflow="block",
            on_success=on_success,
            flush_at_exit=False,
            **options,
        )

        def produce(index: int, count: int) -> None:
            rng = random.Random(None if args.seed is None else args.seed * 1009 + index)
            for n in range(count):
                if stop.is_set():
                    return
                event_id = str(uuid.uuid4())
                with lock:
                    started[event_id] = time.monotonic()
                client.track(
                    f"user-{rng.randrange(100)}",
                    rng.choice(_DEMO_EVENTS),
                    attributes={"thread": index, "n": n, "plan": rng.choice(("free", "pro"))},
                    event_id=event_id,
                )

        shares = [args.events // args.threads] * args.threads
        for i in range(args.events % args.threads):
            shares[i] += 1
        producers = [
            threading.Thread(target=produce, args=(i, n), name=f"demo-producer-{i}", daemon=True)
            for i, n in enumerate(shares)
            if n
        ]
        bar = tqdm(
            total=args.events,
            unit="ev",
            desc="delivered",
            file=sys.stderr,
            disable=not _show_progress(args.quiet),
            dynamic_ncols=True,
        )
        begin = time.monotonic()
        deadline = begin + args.timeout
        timed_out = False
        try:
            for thread in producers:
                thread.start()
            while True:
                producing = any(t.is_alive() for t in producers)
                if producing:
                    time.sleep(0.1)
                    done = False
                else:
                    done = client.flush(timeout=0.1)
                now_stats = client.stats()
                settled = now_stats.delivered + now_stats.failed + now_stats.dropped
                postfix = {"retries": now_stats.retries, "429s": now_stats.rate_limited}
                bar.set_postfix(postfix, refresh=False)
                bar.update(settled - bar.n)
                if done:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
            elapsed = time.monotonic() - begin
        finally:
            stop.set()
            bar.close()
            client.shutdown(timeout=0)
            for thread in producers:
                thread.join(1)
        stats = client.stats()
        accepted = px.event_ids()
        responses: dict[str, int] = {}
        for request in px.requests:
            key = "dropped" if request.status is None else str(request.status)
            responses[key] = responses.get(key, 0) + 1
        config = client.config

    accepted_set = set(accepted)
    missing = sum(1 for event_id in started if event_id not in accepted_set)
    lats = sorted(latencies)
    report: dict[str, Any] = {
        "events": args.events,
        "threads": len(producers),
        "tracked": stats.tracked,
        "delivered": stats.delivered,
        "retried": stats.retries,
        "rate_limited": stats.rate_limited,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "failed_by_reason": {k: v for k, v in stats.failed_by_reason.items() if v},
        "dropped_by_reason": {k: v for k, v in stats.dropped_by_reason.items() if v},
        "elapsed_s": round(elapsed, 3),
        "throughput_eps": round(stats.delivered / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {
            "p50": _ms(_percentile(lats, 50)),
            "p95": _ms(_percentile(lats, 95)),
            "p99": _ms(_percentile(lats, 99)),
            "max": _ms(lats[-1] if lats else None),
        },
        "server": {
            "requests": sum(responses.values()),
            "accepted": len(accepted),
            "duplicates": len(accepted) - len(accepted_set),
            "responses": dict(sorted(responses.items())),
        },
        "client": {"workers": config.workers, "rate_limit": config.rate_limit},
        "missing": missing,
        "timed_out": timed_out,
    }
    lost = (
        missing > 0
        or stats.failed > 0
        or stats.dropped > 0
        or stats.tracked != args.events
        or timed_out
    )
    report["lost"] = lost
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_demo_text(args, report))
    return EXIT_FAILED if lost else EXIT_OK


def _demo_text(args: argparse.Namespace, r: dict[str, Any]) -> str:
    def pct(value: float) -> str:
        return f"{value * 100:g}%"

    lat = r["latency_ms"]
    server = r["server"]
    limit = f"{args.rate_limit:g} req/s" if args.rate_limit else "no"
    low, high = args.latency * 1000, (args.latency + args.jitter) * 1000
    pacing = r["client"]["rate_limit"]
    lines = [
        f"tracker demo: {r['events']} events from {r['threads']} threads into a local FakePX",
        f"  server: {pct(args.fail_rate)} 500s, {pct(args.drop_rate)} dropped connections, "
        f"{limit} rate limit, {low:g}-{high:g} ms latency",
        f"  client: {r['client']['workers']} workers, pacing "
        + ("off" if pacing is None else f"{pacing:g} req/s"),
        "",
        f"  tracked      {r['tracked']:>8}",
        f"  delivered    {r['delivered']:>8}",
        f"  retried      {r['retried']:>8}   (after 500s, dropped connections and 429s)",
        f"  429s seen    {r['rate_limited']:>8}   (every sender paused for Retry-After)",
        f"  failed       {r['failed']:>8}" + _reasons(r["failed_by_reason"]),
        f"  dropped      {r['dropped']:>8}" + _reasons(r["dropped_by_reason"]),
        f"  throughput   {r['throughput_eps'] or 0:>8.1f} events/s over {r['elapsed_s']:.2f} s",
    ]
    if lat["p50"] is not None:
        lines.append(
            f"  latency      p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
            f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms (track() to delivered)"
        )
    answers = ", ".join(f"{n} x {status}" for status, n in server["responses"].items())
    lines.append(f"  server saw   {server['requests']:>8} requests: {answers or 'none'}")
    lines.append("")
    if r["timed_out"]:
        lines.append(f"result: gave up waiting after {args.timeout:g} s")
    if r["lost"]:
        lines.append(
            f"result: LOST EVENTS: {r['missing']} of {r['events']} never reached FakePX "
            f"({r['failed']} failed, {r['dropped']} dropped)"
        )
    else:
        duplicates = server["duplicates"]
        extra = f" ({duplicates} delivered twice)" if duplicates else ""
        lines.append(f"result: nothing lost: every tracked event reached FakePX{extra}")
    return "\n".join(lines)


def _reasons(by_reason: Mapping[str, int]) -> str:
    if not by_reason:
        return ""
    return "   (" + ", ".join(f"{reason} {n}" for reason, n in by_reason.items()) + ")"


# -- tracker send: reading lines -----------------------------------------------------------

_CAMEL_FIELDS = {
    "identifyId": "identify_id",
    "eventName": "event_name",
    "propertyKey": "property_key",
    "userType": "user_type",
    "accountId": "account_id",
    "date": "date",
    "eventId": "event_id",
    "sessionId": "session_id",
    "eventType": "event_type",
    "globalContext": "global_context",
    "attributes": "attributes",
    "url": "url",
    "referrer": "referrer",
    "remoteHost": "remote_host",
}
_FIELDS = {**_CAMEL_FIELDS, **{name: name for name in _CAMEL_FIELDS.values()}}


class BadLine(Exception):
    """A line that cannot become an event; ``raw`` when it was not a JSON object."""

    def __init__(
        self, reason: str, *, raw: Optional[str] = None, event: Optional[dict[str, Any]] = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.event = event


def parse_line(data: bytes) -> dict[str, Any]:
    """The event object of one input line: a plain event, or the ``event`` of a
    dead-letter record. Raises BadLine."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = data.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
        raise BadLine(f"not UTF-8 text ({exc.reason} at byte {exc.start})", raw=raw) from None
    text = text.strip()
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"not JSON: {exc}", raw=text) from None
    if not isinstance(obj, dict):
        raise BadLine(f"not a JSON object (got a JSON {type(obj).__name__})", raw=text)
    if "line" in obj and "reason" in obj:  # a record of a dead-letter file
        if isinstance(obj.get("event"), dict):
            event: dict[str, Any] = obj["event"]
            return event
        if "raw" in obj:
            raw_text = obj["raw"]
            raw_text = raw_text if isinstance(raw_text, str) else json.dumps(raw_text)
            raise BadLine(str(obj["reason"]), raw=raw_text)
        raise BadLine("dead-letter record without an event object", raw=text)
    return obj


def _date(value: object) -> object:
    """``date`` from JSON: epoch ms stays an int, ISO-8601 becomes an aware datetime."""
    if not isinstance(value, str):
        return value  # track() checks ints and refuses everything else, naming the field
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # fromisoformat() takes no "Z" before Python 3.11
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            "date", f"must be epoch milliseconds or an ISO-8601 date-time (got {value!r})"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValidationError("date", f"an ISO-8601 date-time needs a timezone (got {value!r})")
    return when


def event_arguments(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``track()`` keyword arguments from an event object in camelCase or snake_case.

    Raises ValidationError for an unknown or repeated field, or an unreadable date.
    """
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        name = _FIELDS.get(key)
        if name is None:
            raise ValidationError(key, "unknown field")
        if name in kwargs:
            raise ValidationError(name, "given twice (in camelCase and snake_case)")
        kwargs[name] = value
    for name in [name for name, value in kwargs.items() if value is None]:
        if name not in ("identify_id", "event_name"):
            del kwargs[name]  # null means "not given"; track() will name missing ones
    if "date" in kwargs:
        kwargs["date"] = _date(kwargs["date"])
    kwargs.setdefault("identify_id", None)
    kwargs.setdefault("event_name", None)
    return kwargs


# -- tracker send: bookkeeping -------------------------------------------------------------


class DeadLetterError(Exception):
    """The dead-letter file could not be written (disk full...): the run must stop."""


class DeadLetter:
    """The dead-letter file: one JSON object per line not delivered. Not thread-safe by
    itself; the Ledger's lock guards it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self._file: Optional[IO[str]] = None

    def open(self, append: bool) -> None:
        try:
            self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CliError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError("dead-letter file not open")
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise DeadLetterError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.written += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if stat.S_ISREG(info.st_mode) and info.st_size == 0:
                os.remove(self.path)  # no litter beside the input when all went well


class Ledger:
    """What ``tracker send`` must remember: the line of each pending event (nothing for
    settled ones, so memory stays flat for any file size), outcomes, and the resume
    watermark. Callbacks from worker threads and the reader share one lock."""

    def __init__(self, dead: DeadLetter, read_through: int) -> None:
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._lines: dict[int, str] = {}  # line -> event id; insertion order = line order
        self._ids: dict[str, list[int]] = {}  # event id -> lines (an id may repeat)
        self._read_through = read_through
        self.dead = dead
        self.delivered = 0
        self.bad = 0
        self.failed: dict[str, int] = {}
        # PX refused the key before accepting a single event: the key is wrong, not the
        # events. Those stay unsettled (a --resume run with the right key sends them)
        # instead of filling the dead-letter file with the whole input.
        self.key_refused: Optional[DeliveryError] = None
        self.write_error: Optional[str] = None
        # Set before an interrupted run shuts the tracker down: what that drops was not
        # refused by anyone, so it stays unsettled too.
        self.interrupted = False

    @property
    def halted(self) -> bool:
        """The run must stop: the key was refused, or dead letters cannot be written."""
        return self.key_refused is not None or self.write_error is not None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._lines)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        with self._room:
            if len(self._lines) >= limit:
                self._room.wait(timeout)
            return len(self._lines) < limit

    def add(self, line: int, event_id: str) -> None:
        with self._lock:
            self._lines[line] = event_id
            self._ids.setdefault(event_id, []).append(line)

    def forget(self, line: int, event_id: str) -> None:
        with self._lock:
            self._lines.pop(line, None)
            lines = self._ids.get(event_id)
            if lines is not None and line in lines:
                lines.remove(line)
                if not lines:
                    del self._ids[event_id]

    def _settle(self, event_id: str) -> Optional[int]:
        lines = self._ids.get(event_id)
        if not lines:
            return None
        line = lines.pop(0)
        if not lines:
            del self._ids[event_id]
        del self._lines[line]
        self._room.notify()
        return line

    def on_success(self, event: CustomEvent) -> None:
        with self._lock:
            self._settle(event.event_id)
            self.delivered += 1

    def on_error(self, event: CustomEvent, error: DeliveryError) -> None:
        with self._lock:
            if self.interrupted and error.reason == "shutdown":
                return
            if error.reason == "unauthorized" and not self.delivered:
                self.key_refused = self.key_refused or error
                self.interrupted = True
                return
            lines = self._ids.get(event.event_id)
            record: dict[str, Any] = {"line": lines[0] if lines else None, "reason": error.reason}
            if error.status_code is not None:
                record["status"] = error.status_code
            if error.message:
                record["message"] = error.message
            record["event"] = event.to_dict()
            # Written before settled: if the write fails, the line stays pending and the
            # watermark never passes an event that is neither delivered nor on file.
            try:
                self.dead.write(record)
            except DeadLetterError as exc:
                self.write_error = self.write_error or str(exc)
                self.interrupted = True
                return
            self._settle(event.event_id)
            self.failed[error.reason] = self.failed.get(error.reason, 0) + 1

    def bad_line(self, line: int, error: BadLine) -> None:
        record: dict[str, Any] = {"line": line, "reason": error.reason}
        if error.event is not None:
            record["event"] = error.event
        else:
            record["raw"] = error.raw
        with self._lock:
            try:
                self.dead.write(record)
            except DeadLetterError as exc:
                self.write_error = self.write_error or str(exc)
                return
            self.bad += 1
            self._read_through = line

    def read(self, line: int) -> None:
        """Every line up to ``line`` was handed to the tracker or dead-lettered."""
        with self._lock:
            self._read_through = line

    def checkpoint(self) -> int:
        """The watermark, with every dead letter below it flushed to the file first."""
        with self._lock:
            self.dead.flush()
            for first in self._lines:
                return first - 1
            return self._read_through


class ResumeState:
    """The small JSON file that lets ``--resume`` skip settled lines."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self._saved: Optional[int] = None

    def load(self) -> Optional[int]:
        """The watermark of an earlier run, None when there is no state file."""
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read resume state {self.path}: {exc}") from None
        watermark = data.get("watermark") if isinstance(data, dict) else None
        if isinstance(watermark, bool) or not isinstance(watermark, int) or watermark < 0:
            raise CliError(f"{self.path} is not a resume state of tracker send")
        self._saved = watermark
        return watermark

    def save(self, watermark: int, *, complete: bool = False, force: bool = False) -> None:
        if watermark == self._saved and not force:
            return
        data = {
            "input": self.source,
            "watermark": watermark,
            "complete": complete,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file)
            file.write("\n")
        os.replace(temporary, self.path)  # a crash never leaves half a state file
        self._saved = watermark


class _Interrupts:
    """SIGINT/SIGTERM as KeyboardInterrupt, but never inside ``track()``: an exception
    in the middle of it could leave the tracker's counters half-updated."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._critical = 0

    def handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signal = signum
        if not self._critical:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self.signal is not None and not self._critical:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may set handlers; Ctrl-C stays the default
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self.handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                if old is not None:  # None: installed outside Python, cannot be restored
                    signal.signal(sig, old)


# -- tracker send --------------------------------------------------------------------------


def _api_key(args: argparse.Namespace) -> Optional[str]:
    """The key from --api-key-file or --api-key; None leaves it to PX_API_KEY."""
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as file:
                key = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise CliError(f"cannot read --api-key-file {args.api_key_file}: {reason}") from None
        if not key:
            raise CliError(f"--api-key-file {args.api_key_file} is empty")
        _secrets.add(key)
        return key
    if args.api_key is not None:
        _secrets.add(args.api_key)
        _warn(
            "send",
            "--api-key shows the key to anyone who can list processes or read your shell "
            "history; prefer --api-key-file PATH or PX_API_KEY",
        )
        return str(args.api_key)
    env_key = os.environ.get("PX_API_KEY", "").strip()
    if env_key:
        _secrets.add(env_key)
    return None


def _open_input(path: str) -> tuple[IO[bytes], Optional[int]]:
    """The input as a binary stream, and its size when known."""
    if path == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    size: Optional[int] = None
    with contextlib.suppress(OSError, ValueError):
        info = os.fstat(stream.fileno())
        if stat.S_ISREG(info.st_mode):
            size = info.st_size
    return stream, size


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _send(args: argparse.Namespace) -> int:
    if args.local and (args.base_url or args.region):
        raise CliError("--local sends to a local FakePX: leave out --base-url and --region")
    key = _api_key(args)
    if key is None and not args.local and not os.environ.get("PX_API_KEY", "").strip():
        raise CliError("no API key: set PX_API_KEY, or pass --api-key-file PATH")
    source = args.file
    stem = "stdin" if source == "-" else source
    dead_path = args.dead_letter or f"{stem}.dead.jsonl"
    state_path = args.state or f"{stem}.resume.json"
    if source != "-":
        for what, path in (("--dead-letter", dead_path), ("--state", state_path)):
            if _same_file(path, source):
                raise CliError(f"{what} {path} is the input file")
    stream, size = _open_input(source)
    with contextlib.ExitStack() as stack:
        if source != "-":
            stack.callback(stream.close)
        state = ResumeState(state_path, "-" if source == "-" else os.path.abspath(source))
        skip_through = (state.load() or 0) if args.resume else 0
        options: dict[str, Any] = {"overflow": "block", "flush_at_exit": False}
        px: Optional[FakePX] = None
        if args.local:
            px = stack.enter_context(FakePX())
            options["base_url"] = px.url
            key = key or os.environ.get("PX_API_KEY", "").strip() or "local"
        if args.product_key is not None:
            options["product_key"] = args.product_key
        if args.region is not None:
            options["region"] = args.region
        if args.base_url is not None:
            options["base_url"] = args.base_url
        if args.workers is not None:
            options["workers"] = args.workers
        if args.rate_limit is not None:
            options["rate_limit"] = args.rate_limit or None
        if key is not None:
            options["api_key"] = key
        dead = DeadLetter(dead_path)
        stack.callback(dead.close)  # after the tracker's shutdown: it may still report
        ledger = Ledger(dead, skip_through)
        client = Tracker(on_success=ledger.on_success, on_error=ledger.on_error, **options)
        stack.callback(client.shutdown, 0)
        # Only once the options proved valid: a typo must not truncate the last dead letters.
        dead.open(append=args.resume)
        target = "a local FakePX" if args.local else client.config.base
        run = _SendRun(args, stream, size, skip_through, ledger, state, client, target, px)
        return run.run()
    return EXIT_FAILED  # unreachable: mypy cannot see that ExitStack never swallows


class _SendRun:
    """One ``tracker send``: read, track, wait, report."""

    def __init__(
        self,
        args: argparse.Namespace,
        stream: IO[bytes],
        size: Optional[int],
        skip_through: int,
        ledger: Ledger,
        state: ResumeState,
        client: Tracker,
        target: str,
        local_px: Optional[FakePX],
    ) -> None:
        self.args = args
        self.stream = stream
        self.size = size
        self.skip_through = skip_through
        self.ledger = ledger
        self.state = state
        self.client = client
        self.target = target
        self.local_px = local_px
        self.interrupts = _Interrupts()
        self.lines = 0
        self.skipped = 0
        self.tracked = 0
        self.bytes_read = 0
        self.read_error: Optional[str] = None
        self.began = time.monotonic()

    def run(self) -> int:
        by_bytes = self.size is not None
        bar = tqdm(
            total=self.size,
            unit="B" if by_bytes else " lines",
            unit_scale=by_bytes,
            unit_divisor=1024,
            desc="sending",
            file=sys.stderr,
            disable=not _show_progress(self.args.quiet),
            dynamic_ncols=True,
        )
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(bar, done), name="send-progress")
        ticker.daemon = True
        ledger = self.ledger
        interrupted = False
        with self.interrupts.installed():
            ticker.start()
            try:
                self._read_all()
                while not self.client.flush(timeout=0.2) and not ledger.halted:
                    pass
            except KeyboardInterrupt:
                interrupted = True
            finally:
                done.set()
                ticker.join()
                self._tick_once(bar)
                bar.close()
            if interrupted or ledger.halted:
                ledger.interrupted = True
                # A second Ctrl-C ends this grace period, not the bookkeeping after it.
                with contextlib.suppress(KeyboardInterrupt):
                    self.client.shutdown(timeout=0.5 if interrupted else 0)
            else:
                self.client.shutdown(timeout=0)
        watermark = ledger.checkpoint()
        complete = not (interrupted or ledger.halted or self.read_error)
        try:
            self.state.save(watermark, complete=complete, force=True)
        except OSError as exc:
            self.read_error = f"cannot write {self.state.path}: {exc.strerror or exc}"
        return self._report(watermark, self.interrupts.signal if interrupted else None)

    def _read_all(self) -> None:
        ledger = self.ledger
        limit = self.client.config.max_queue_size
        interrupts = self.interrupts
        line = 0
        try:
            for data in self.stream:
                line += 1
                self.bytes_read += len(data)
                if line <= self.skip_through:
                    self.skipped += 1
                elif not data.strip():
                    ledger.read(line)
                else:
                    # Our own wait for room (interruptible) keeps track() from blocking.
                    while not ledger.wait_for_room(limit, 0.2) and not ledger.halted:
                        pass
                    if ledger.halted:
                        return
                    with interrupts.critical():
                        self._one(line, data)
                self.lines = line
        except OSError as exc:
            self.read_error = f"reading stopped after line {self.lines}: {exc.strerror or exc}"

    def _one(self, line: int, data: bytes) -> None:
        ledger = self.ledger
        try:
            obj = parse_line(data)
        except BadLine as exc:
            ledger.bad_line(line, exc)
            return
        try:
            kwargs = event_arguments(obj)
        except ValidationError as exc:
            ledger.bad_line(line, BadLine(str(exc), event=obj))
            return
        event_id = kwargs.get("event_id")
        if not isinstance(event_id, str) or not event_id.strip():
            if "event_id" in kwargs:
                reason = f"event_id: must be a non-empty string (got {event_id!r})"
                ledger.bad_line(line, BadLine(reason, event=obj))
                return
            # Our id, not track()'s: the callback may fire before track() returns.
            event_id = kwargs["event_id"] = str(uuid.uuid4())
        ledger.add(line, event_id)
        try:
            self.client.track(kwargs.pop("identify_id"), kwargs.pop("event_name"), **kwargs)
        except ValidationError as exc:
            ledger.forget(line, event_id)
            ledger.bad_line(line, BadLine(str(exc), event=obj))
            return
        self.tracked += 1
        ledger.read(line)

    def _tick(self, bar: Any, done: threading.Event) -> None:
        last_save = time.monotonic()
        while not done.wait(0.25):
            self._tick_once(bar)
            if self.local_px is not None:
                self.local_px.clear()  # it keeps every request: memory must stay flat
            if time.monotonic() - last_save >= 1.0:
                last_save = time.monotonic()
                try:
                    self.state.save(self.ledger.checkpoint())
                except OSError as exc:
                    logger.error("cannot write %s: %s", self.state.path, exc)

    def _tick_once(self, bar: Any) -> None:
        ledger = self.ledger
        elapsed = max(1e-9, time.monotonic() - self.began)
        postfix = {
            "delivered": ledger.delivered,
            "failed": sum(ledger.failed.values()),
            "bad": ledger.bad,
            "events/s": f"{ledger.delivered / elapsed:.0f}",
        }
        bar.set_postfix(postfix, refresh=False)
        bar.update((self.lines if self.size is None else self.bytes_read) - bar.n)

    def _report(self, watermark: int, interrupted_by: Optional[int]) -> int:
        ledger = self.ledger
        stats = self.client.stats()
        failed = sum(ledger.failed.values())
        unsent = ledger.pending
        elapsed = time.monotonic() - self.began
        refused = ledger.key_refused
        if interrupted_by is not None:
            code = 128 + interrupted_by  # the shell's convention: 130 for Ctrl-C
        elif self.read_error or ledger.halted:
            code = EXIT_USAGE
        elif ledger.bad or failed:
            code = EXIT_FAILED
        else:
            code = EXIT_OK
        summary: dict[str, Any] = {
            "input": self.args.file,
            "target": self.target,
            "lines": self.lines,
            "skipped": self.skipped,
            "tracked": self.tracked,
            "delivered": ledger.delivered,
            "bad_lines": ledger.bad,
            "failed": failed,
            "failed_by_reason": dict(ledger.failed),
            "unsent": unsent,
            "retries": stats.retries,
            "rate_limited": stats.rate_limited,
            "dead_letter": ledger.dead.path if ledger.dead.written else None,
            "dead_letter_records": ledger.dead.written,
            "state": self.state.path,
            "watermark": watermark,
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(ledger.delivered / elapsed, 1) if elapsed > 0 else None,
            "interrupted": interrupted_by is not None,
            "exit_code": code,
        }
        if self.args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(_send_text(summary))
        resume = f"run again with --resume to go on after line {watermark}"
        for problem in (self.read_error, ledger.write_error):
            if problem:
                _error("send", f"{problem}; {resume}")
        if refused is not None:
            answer = f"HTTP {refused.status_code}" if refused.status_code else "no answer"
            if refused.message:
                answer += f": {refused.message}"
            _error(
                "send",
                f"PX refused the API key ({answer}) before accepting any event; "
                f"{unsent} event(s) not sent. Check the key, then {resume}",
            )
        if interrupted_by is not None:
            print(
                f"tracker send: interrupted; {unsent} event(s) not sent; {resume}", file=sys.stderr
            )
        return code


def _send_text(s: dict[str, Any]) -> str:
    skipped = f" ({s['skipped']} skipped: settled by an earlier run)" if s["skipped"] else ""
    lines = [
        f"tracker send: {s['input']} -> {s['target']}",
        f"  lines read   {s['lines']:>8}{skipped}",
        f"  delivered    {s['delivered']:>8}",
        f"  bad lines    {s['bad_lines']:>8}",
        f"  failed       {s['failed']:>8}" + _reasons(s["failed_by_reason"]),
    ]
    if s["unsent"]:
        lines.append(f"  not sent     {s['unsent']:>8}   (run again with --resume)")
    lines.append(f"  retries      {s['retries']:>8}   ({s['rate_limited']} 429s seen)")
    if s["dead_letter"]:
        lines.append(f"  dead letter  {s['dead_letter']} ({s['dead_letter_records']} records)")
    lines.append(f"  took         {s['elapsed_s']:.1f} s, {s['events_per_s'] or 0:.0f} events/s")
    return "\n".join(lines)


# -- tracker serve -------------------------------------------------------------------------


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


def _serve(args: argparse.Namespace) -> int:
    if args.api_key:
        _secrets.add(args.api_key)
    log = _RequestLog(bool(args.verbose))
    px = FakePX(
        api_key=args.api_key,
        port=args.port,
        host=args.host,
        fail_rate=args.fail_rate,
        rate_limit=args.rate_limit or None,
        retry_after=args.retry_after,
        latency=args.latency,
        latency_jitter=args.jitter,
        drop_rate=args.drop_rate,
        seed=args.seed,
        on_request=log,
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

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, on_signal)
        keys = "only the --api-key key" if args.api_key else "any API key"
        print(f"FakePX listening on {px.url} (accepting {keys})", flush=True)
        print(f"  export PX_BASE_URL={px.url}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            px.clear()  # FakePX records every request; a server left running must not grow
    finally:
        for sig, old in previous.items():
            if old is not None:
                signal.signal(sig, old)
        px.stop()
    print(f"stopped: {log.requests} requests, {log.accepted} events accepted", flush=True)
    return EXIT_OK
