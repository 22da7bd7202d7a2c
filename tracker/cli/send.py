"""``tracker send FILE``: a batch upload of JSON Lines events, with dead letters and resume."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from typing import IO, TYPE_CHECKING, Any, Optional

from tracker._tracker import Tracker
from tracker.cli._common import (
    EXIT_FAILED,
    CliError,
    Command,
    add_destination_options,
    add_key_options,
    add_output_options,
    api_key_from,
    env_api_key,
    number,
    tracker_options,
)
from tracker.cli._ledger import DeadLetter, Ledger, ResumeState
from tracker.cli._sending import SendRun

if TYPE_CHECKING:
    from tracker.testing import FakePX

_EPILOG = """\
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


def add_arguments(send: argparse.ArgumentParser) -> None:
    send.add_argument("file", metavar="FILE", help="JSON Lines file, or - for stdin")
    add_destination_options(send)
    send.add_argument(
        "--local",
        action="store_true",
        help="send to an in-process FakePX instead of PX (no API key needed)",
    )
    add_key_options(send)
    send.add_argument(
        "--product-key",
        metavar="KEY",
        help="propertyKey of lines without one (else PX_PRODUCT_KEY)",
    )
    send.add_argument(
        "--workers", type=int, metavar="N", help="sending threads (else PX_WORKERS, else 16)"
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
    send.add_argument(
        "--spool",
        metavar="DIR",
        help="send through a durable spool in DIR: a run killed at any moment goes on, when "
        "started again, after the last accepted line (bad lines are reported on stderr)",
    )
    send.add_argument(
        "--timeout",
        type=number,
        metavar="SECONDS",
        help="with --spool: how long to wait for delivery (default: until done)",
    )
    add_output_options(send, "summary")


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


def run(args: argparse.Namespace) -> int:
    if args.local and (args.base_url or args.region):
        raise CliError("--local sends to a local FakePX: leave out --base-url and --region")
    key = api_key_from(args, "send", required=not args.local)
    source = args.file
    if args.spool is not None:
        return _send_through_spool(args, key)
    if args.timeout is not None:
        raise CliError("--timeout goes with --spool")
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
            # --local only: an upload to PX never imports the testing kit.
            from tracker.testing import FakePX  # noqa: PLC0415

            px = stack.enter_context(FakePX())
            options["base_url"] = px.url
            key = key or env_api_key() or "local"
        options.update(tracker_options(args))
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
        upload = SendRun(args, stream, size, skip_through, ledger, state, client, target, px)
        return upload.run()
    return EXIT_FAILED  # unreachable: mypy cannot see that ExitStack never swallows


def _send_through_spool(args: argparse.Namespace, key: Optional[str]) -> int:
    """``--spool DIR``: the spool keeps the events and the place in the file."""
    if args.file == "-":
        raise CliError("--spool needs a file: a run that resumes must read the same input")
    for flag in ("resume", "dead_letter", "state", "local"):
        if getattr(args, flag):
            name = "--" + flag.replace("_", "-")
            raise CliError(f"{name} does not go with --spool (the spool resumes on its own)")
    from tracker.cli import _spool  # noqa: PLC0415
    from tracker.cli._jsonl import event_arguments, parse_line  # noqa: PLC0415

    options = tracker_options(args)
    return _spool.send(
        args.file,
        args.spool,
        api_key=key,
        options=options,
        to_arguments=lambda data: event_arguments(parse_line(data)),
        timeout=args.timeout,
    )


COMMAND = Command(
    name="send",
    help="upload a JSON Lines file of events to PX",
    description="Validate and send the events of a JSON Lines file (- for stdin).",
    add_arguments=add_arguments,
    run=run,
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
