"""The ``tracker`` command line: the parser assembled from the commands, and ``main()``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from tracker._core import VERSION
from tracker.cli import demo, send, serve, spool
from tracker.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Command,
    error,
    logging_to_stderr,
)
from tracker.errors import ConfigError

__all__ = [
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Command",
    "build_parser",
    "main",
]

# The registry, in the order `tracker --help` lists them. A new command is a module that
# defines COMMAND (its options, its run function) and one line here.
COMMANDS: tuple[Command, ...] = (
    demo.COMMAND,
    send.COMMAND,
    serve.COMMAND,
    spool.COMMAND,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker",
        description="Send Gainsight PX custom events, and try the pipeline locally.",
    )
    parser.add_argument("--version", action="version", version=f"tracker (px-tracker) {VERSION}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=command.formatter_class,
        )
        command.add_arguments(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    name: Optional[str] = args.command
    if name is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command = next(c for c in COMMANDS if c.name == name)
    verbose = getattr(args, "verbose", 0)  # a command without -v logs errors only
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    try:
        with logging_to_stderr(level):
            return command.run(args)
    except (CliError, ConfigError) as exc:
        error(name, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"tracker {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug of ours: one line, never a traceback with the key in it
        error(name, f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_FAILED
