"""``tracker spool status|drain DIR``: what a durable spool holds, and sending what is left."""

from __future__ import annotations

import argparse

from tracker.cli._common import (
    CliError,
    Command,
    add_destination_options,
    add_key_options,
    api_key_from,
    number,
    tracker_options,
)

_EPILOG = """\
status lists each spool file of DIR: whose process owns it (live, or gone: the next
tracker using DIR, or `tracker spool drain`, sends its events), how many events it holds,
its size and the age of its oldest event; files set aside as corrupt are listed too.

drain sends every event that processes which are gone left in DIR, with their original
eventIds, and exits: files of live processes and of other API keys are left alone.

exit codes: 0 done (drain: everything delivered); 1 some events failed or are still
waiting; 2 usage, configuration or an unreadable directory.
"""


def add_arguments(spool: argparse.ArgumentParser) -> None:
    actions = spool.add_subparsers(dest="action", metavar="ACTION")
    status = actions.add_parser("status", help="what each spool file of DIR holds")
    status.add_argument("directory", metavar="DIR")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    drain = actions.add_parser("drain", help="send what processes that are gone left in DIR")
    drain.add_argument("directory", metavar="DIR")
    add_key_options(drain)
    add_destination_options(drain)
    drain.add_argument(
        "--timeout",
        type=number,
        metavar="SECONDS",
        help="how long to wait for delivery (default: until done)",
    )
    drain.add_argument(
        "-v", "--verbose", action="count", default=0, help="log 429s and failures (-vv: retries)"
    )


def run(args: argparse.Namespace) -> int:
    from tracker.cli import _spool  # noqa: PLC0415  (sqlite3 only for this command)

    if args.action is None:
        raise CliError("say what to do: tracker spool status DIR, or tracker spool drain DIR")
    if args.action == "status":
        return _spool.status(args.directory, as_json=args.json)
    key = api_key_from(args, "spool")
    options = tracker_options(args)
    return _spool.drain(args.directory, api_key=key, options=options, timeout=args.timeout)


COMMAND = Command(
    name="spool",
    help="inspect a durable spool directory, or send what it holds",
    description="Inspect the spool files of DIR (status), or send what they hold (drain).",
    add_arguments=add_arguments,
    run=run,
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
