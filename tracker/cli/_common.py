"""What every ``tracker`` command shares: exit codes, redaction, progress, logging, signals."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any, Callable, Optional, Union

from tqdm import tqdm

logger = logging.getLogger("tracker")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Keys that must never be printed: whatever key this process was given.
_secrets: set[str] = set()


class CliError(Exception):
    """A usage, configuration or input problem: one line on stderr, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its help texts, the options it owns, and what runs it."""

    name: str
    help: str
    description: str
    #: Adds the command's own options to its subparser.
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: Runs the parsed command; returns the exit code. CliError and ConfigError become
    #: exit code 2 with one line on stderr.
    run: Callable[[argparse.Namespace], int]
    epilog: Optional[str] = None
    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter


# -- never show a key ----------------------------------------------------------------------


def add_secret(key: str) -> None:
    """Redact ``key`` from everything the command line prints from now on."""
    _secrets.add(key)


def redact(text: str) -> str:
    for secret in _secrets:
        if len(secret) >= 4:  # a shorter "key" is no secret, and would mangle every word
            text = text.replace(secret, "***")
    return text


def error(command: str, message: str) -> None:
    print(redact(f"tracker {command}: error: {message}"), file=sys.stderr)


def warn(command: str, message: str) -> None:
    print(redact(f"tracker {command}: warning: {message}"), file=sys.stderr)


# -- the API key ---------------------------------------------------------------------------


def add_key_options(command: argparse.ArgumentParser) -> None:
    """--api-key-file and --api-key (else PX_API_KEY), for a command that sends to PX."""
    keys = command.add_mutually_exclusive_group()
    keys.add_argument("--api-key-file", metavar="PATH", help="read the API key from this file")
    keys.add_argument(
        "--api-key",
        metavar="KEY",
        help="the API key (visible in the process list: prefer --api-key-file or PX_API_KEY)",
    )


def api_key_from(args: argparse.Namespace, command: str, required: bool = True) -> Optional[str]:
    """The key from --api-key-file or --api-key; None leaves it to PX_API_KEY (CliError
    when that is unset too, unless not ``required``). Whichever it is, it is redacted from
    everything the command prints."""
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as file:
                key = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise CliError(f"cannot read --api-key-file {args.api_key_file}: {reason}") from None
        if not key:
            raise CliError(f"--api-key-file {args.api_key_file} is empty")
        add_secret(key)
        return key
    if args.api_key is not None:
        add_secret(args.api_key)
        warn(
            command,
            "--api-key shows the key to anyone who can list processes or read your shell "
            "history; prefer --api-key-file PATH or PX_API_KEY",
        )
        return str(args.api_key)
    env_key = env_api_key()
    if env_key:
        add_secret(env_key)
    elif required:
        raise CliError("no API key: set PX_API_KEY, or pass --api-key-file PATH")
    return None


def add_destination_options(command: argparse.ArgumentParser) -> None:
    """--region, --base-url and --rate-limit (client pacing), for a command that sends to
    PX; ``tracker_options()`` hands them to its Tracker."""
    command.add_argument("--region", help="us, eu or us2 (else PX_REGION, else us)")
    command.add_argument("--base-url", metavar="URL", help="PX host to send to (else PX_BASE_URL)")
    command.add_argument(
        "--rate-limit",
        type=rate,
        metavar="RPS",
        help="client pacing in requests/s, 0 for none (else PX_RATE_LIMIT, else 200)",
    )


def tracker_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Tracker options a command's flags gave (--product-key, --region, --base-url,
    --workers, --rate-limit where it has them; 0 for --rate-limit means unpaced). The rest
    come from the environment, as for any Tracker."""
    options: dict[str, Any] = {}
    for name in ("product_key", "region", "base_url", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if getattr(args, "rate_limit", None) is not None:
        options["rate_limit"] = args.rate_limit or None
    return options


def env_api_key() -> str:
    """PX_API_KEY, where the Tracker reads the key from when none was given; "" if unset."""
    return os.environ.get("PX_API_KEY", "").strip()


# -- output --------------------------------------------------------------------------------


def add_output_options(command: argparse.ArgumentParser, what: str) -> None:
    """--json, --quiet and --verbose, for a command that ends with a report on stdout."""
    command.add_argument("--json", action="store_true", help=f"print the {what} as JSON")
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    command.add_argument(
        "-v", "--verbose", action="count", default=0, help="log 429s and failures (-vv: retries)"
    )


def progress_bar(quiet: bool, **options: Any) -> tqdm[Any]:
    """A progress bar on stderr, shown only on a terminal and unless --quiet."""
    return tqdm(
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        **options,
    )


def reasons(by_reason: Mapping[str, int]) -> str:
    """``   (reason n, ...)`` after a count in a text report; nothing when there are none."""
    if not by_reason:
        return ""
    return "   (" + ", ".join(f"{reason} {n}" for reason, n in by_reason.items()) + ")"


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear a live progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{self.formatTime(record, '%H:%M:%S')} {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f" ({type(exc).__name__}: {exc})"  # one line, no traceback
            tqdm.write(redact(text), file=sys.stderr)
        except Exception:
            self.handleError(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str) -> str:
        return time.strftime(datefmt, time.localtime(record.created))


@contextlib.contextmanager
def logging_to_stderr(level: int) -> Iterator[None]:
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


# -- a local FakePX's faults (demo, serve) -------------------------------------------------


def add_fault_options(
    command: argparse.ArgumentParser,
    *,
    fail_rate: float,
    rate_limit: float,
    latency: float,
    jitter: float,
    drop_rate: float,
) -> None:
    """--fail-rate, --rate-limit, --latency, --jitter, --drop-rate and --seed, with the
    command's defaults; ``fault_options()`` turns them into FakePX's arguments."""
    command.add_argument(
        "--fail-rate",
        type=fraction,
        default=fail_rate,
        metavar="P",
        help="share of 500s (default: %(default)s)",
    )
    command.add_argument(
        "--rate-limit",
        type=rate,
        default=rate_limit,
        metavar="RPS",
        help="the server's limit in requests/s before 429s, 0 for none (default: %(default)s)",
    )
    command.add_argument(
        "--latency",
        type=number,
        default=latency,
        metavar="SECONDS",
        help="server latency (default: %(default)s)",
    )
    command.add_argument(
        "--jitter",
        type=number,
        default=jitter,
        metavar="SECONDS",
        help="random extra latency, up to (default: %(default)s)",
    )
    command.add_argument(
        "--drop-rate",
        type=fraction,
        default=drop_rate,
        metavar="P",
        help="share of connections closed without an answer (default: %(default)s)",
    )
    command.add_argument("--seed", type=int, default=None, help="seed of the server's faults")


def fault_options(args: argparse.Namespace) -> dict[str, Any]:
    """FakePX's keyword arguments for the faults ``add_fault_options()``'s flags gave."""
    return {
        "fail_rate": args.fail_rate,
        "rate_limit": args.rate_limit or None,
        "latency": args.latency,
        "latency_jitter": args.jitter,
        "drop_rate": args.drop_rate,
        "seed": args.seed,
    }


# -- signals -------------------------------------------------------------------------------

SignalHandler = Callable[[int, Optional[FrameType]], None]


@contextlib.contextmanager
def on_stop_signals(handler: SignalHandler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous handlers after it.

    Only the main thread may set handlers: elsewhere nothing is installed and Ctrl-C keeps
    its default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, handler)
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: installed outside Python, cannot be restored
                signal.signal(sig, old)


# -- argument types ------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (got {text!r})")
    return value


def fraction(text: str) -> float:
    value = number(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in 0..1 (got {text!r})")
    return value


def rate(text: str) -> float:
    """Requests per second; 0 (or ``off``/``none``) turns the limit off."""
    if text.strip().lower() in ("off", "none"):
        return 0.0
    return number(text)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535 (got {value})")
    return value


def retry_after(text: str) -> Union[float, str, None]:
    word = text.strip().lower()
    if word == "none":
        return None
    if word == "date":
        return "date"
    try:
        return number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected seconds, 'none' or 'date', got {text!r}"
        ) from None
