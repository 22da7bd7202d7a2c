"""The command line's frame: the command registry, main()'s exit codes, shared pieces."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Optional

import pytest

import tracker.cli
from tracker._counters import SHUTDOWN, UNAUTHORIZED
from tracker._event import CustomEvent
from tracker.cli import _common
from tracker.cli._common import CliError, Command, add_output_options, on_stop_signals
from tracker.cli._ledger import DeadLetter, Ledger
from tracker.errors import ConfigError, DeliveryError

SECRET = "sk-SECRET-1234"

# An option each command owns, and words of its description.
OWN_OPTIONS = {
    "demo": ("--events", "--fail-rate", "--timeout", "nothing was lost"),
    "send": ("--dead-letter", "--resume", "--api-key-file", "exit codes:"),
    "serve": ("--retry-after", "--port", "--drop-rate", "Ctrl-C stops it"),
}


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = tracker.cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


class _Probe:
    """A command for tests, registered the way a real one is: its run does what it's told."""

    def __init__(self, outcome: Optional[BaseException] = None) -> None:
        self.outcome = outcome
        self.seen: Optional[argparse.Namespace] = None
        self.level: Optional[int] = None
        self.handlers: list[logging.Handler] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", default="world")
        add_output_options(parser, "greeting")

    def run(self, args: argparse.Namespace) -> int:
        self.seen = args
        self.level = logging.getLogger("tracker").level
        self.handlers = list(logging.getLogger("tracker").handlers)
        if self.outcome is not None:
            raise self.outcome
        print(f"hello {args.name}")
        return 7


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> _Probe:
    """A ``tracker probe`` command added to the registry for one test."""
    made = _Probe()
    command = Command(
        name="probe",
        help="a test command",
        description="A command registered by the tests.",
        add_arguments=made.add_arguments,
        run=made.run,
    )
    monkeypatch.setattr(tracker.cli, "COMMANDS", (*tracker.cli.COMMANDS, command))
    monkeypatch.setattr(_common, "_secrets", set())  # keys seen by this test only
    return made


class TestRegistry:
    def test_the_registry_holds_the_documented_commands(self) -> None:
        assert [c.name for c in tracker.cli.COMMANDS] == ["demo", "send", "serve", "spool"]

    @pytest.mark.parametrize("name", sorted(OWN_OPTIONS))
    def test_each_command_has_its_own_help(
        self, name: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = run_main([name, "--help"], capsys)
        assert code == 0
        assert out.startswith(f"usage: tracker {name}")
        for word in OWN_OPTIONS[name]:
            assert word in out
        for other in set(OWN_OPTIONS) - {name}:  # options stay with the command owning them
            assert OWN_OPTIONS[other][0] not in out

    def test_top_level_help_lists_every_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run_main(["--help"], capsys)
        assert code == 0
        text = " ".join(out.split())  # argparse wraps long help lines
        for command in tracker.cli.COMMANDS:
            assert f"{command.name} {command.help}" in text

    def test_no_command_prints_help_on_stderr_and_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = run_main([], capsys)
        assert code == 2
        assert out == ""
        assert "COMMAND" in err

    def test_a_registered_command_gets_a_subcommand_and_its_options(
        self, probe: _Probe, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = run_main(["probe", "--name", "px"], capsys)
        assert (code, out, err) == (7, "hello px\n", "")
        assert probe.seen is not None
        assert probe.seen.name == "px"
        code, out, _ = run_main(["--help"], capsys)
        assert "a test command" in out

    def test_importing_the_cli_leaves_the_testing_kit_unimported(self) -> None:
        # A fresh interpreter: this one has the pytest plugin, which imports the kit.
        code = (
            "import sys, tracker.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('tracker.testing')))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert proc.stdout.strip() == "[]"

    def test_console_script_entry_point_is_main(self) -> None:
        # What pip installed from pyproject.toml, not a file that may move.
        scripts = [
            ep
            for ep in metadata.distribution("px-tracker").entry_points
            if ep.group == "console_scripts"
        ]
        assert [(ep.name, ep.value) for ep in scripts] == [("tracker", "tracker.cli:main")]
        assert callable(tracker.cli.main)


class TestExitCodes:
    @pytest.mark.parametrize(
        ("outcome", "code", "says"),
        [
            (CliError(f"bad input near {SECRET}"), 2, "tracker probe: error: bad input near ***"),
            (ConfigError("'workers' must be >= 1 (got 0)"), 2, "tracker probe: error: 'workers'"),
            (KeyboardInterrupt(), 130, "tracker probe: interrupted"),
            (
                RuntimeError(f"boom with {SECRET}"),
                1,
                "tracker probe: error: unexpected RuntimeError: boom with ***",
            ),
        ],
    )
    def test_failures_become_one_redacted_line_and_an_exit_code(
        self,
        probe: _Probe,
        capsys: pytest.CaptureFixture[str],
        outcome: BaseException,
        code: int,
        says: str,
    ) -> None:
        _common.add_secret(SECRET)
        probe.outcome = outcome
        got, out, err = run_main(["probe"], capsys)
        assert got == code
        assert out == ""
        assert err.startswith(says)
        assert len(err.splitlines()) == 1
        assert SECRET not in err
        assert "Traceback" not in err

    def test_usage_error_of_a_command_exits_2(
        self, probe: _Probe, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run_main(["probe", "--colour", "red"], capsys)
        assert code == 2
        assert "--colour" in err
        assert probe.seen is None  # never ran

    @pytest.mark.parametrize(
        ("flags", "level"),
        [([], logging.ERROR), (["-v"], logging.INFO), (["-vv"], logging.DEBUG)],
    )
    def test_verbose_sets_the_level_while_the_command_runs_and_restores_it(
        self,
        probe: _Probe,
        capsys: pytest.CaptureFixture[str],
        flags: list[str],
        level: int,
    ) -> None:
        logger = logging.getLogger("tracker")
        before_level, before_handlers = logger.level, list(logger.handlers)
        probe.outcome = RuntimeError("even when the command fails")
        run_main(["probe", *flags], capsys)
        assert probe.level == level
        assert len(probe.handlers) == len(before_handlers) + 1  # the progress-safe handler
        assert logger.level == before_level
        assert logger.handlers == before_handlers


class TestSignals:
    @staticmethod
    def handler(signum: int, frame: Optional[FrameType]) -> None:
        """Installed, never run."""

    def test_installed_inside_the_block_and_restored_after_it(self) -> None:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        inside: list[object] = []

        def body() -> None:
            with on_stop_signals(self.handler):
                inside.extend(signal.getsignal(sig) for sig in before)
                raise RuntimeError("the block failed")

        with pytest.raises(RuntimeError, match="the block failed"):
            body()
        assert inside == [self.handler, self.handler]
        assert {sig: signal.getsignal(sig) for sig in before} == before

    def test_off_the_main_thread_nothing_is_installed(self) -> None:
        seen: list[object] = []

        def body() -> None:
            with on_stop_signals(self.handler):
                seen.append(signal.getsignal(signal.SIGINT))

        thread = threading.Thread(target=body)
        thread.start()
        thread.join(10)
        assert seen == [signal.getsignal(signal.SIGINT)]
        assert seen[0] != self.handler

    def test_serve_off_the_main_thread_exits_2_and_says_why(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(tracker.cli.main(["serve"])))
        thread.start()
        thread.join(10)
        assert codes == [2]
        assert "main thread" in capsys.readouterr().err


def _event(event_id: str) -> CustomEvent:
    return CustomEvent(
        identify_id="user-1",
        event_name="Imported",
        property_key="AP-CLI-TEST-1",
        date=1_700_000_000_000,
        event_id=event_id,
    )


class TestLedgerReasons:
    """How ``tracker send`` treats the fixed reasons (tracker._counters constants)."""

    @pytest.fixture
    def ledger(self, tmp_path: Path) -> Iterator[Ledger]:
        dead = DeadLetter(str(tmp_path / "dead.jsonl"))
        dead.open(append=False)
        made = Ledger(dead, read_through=0)
        for line, event_id in enumerate(("ev-1", "ev-2"), start=1):
            made.add(line, event_id)
        yield made
        dead.close()

    def test_key_refused_before_any_delivery_halts_without_dead_letters(
        self, ledger: Ledger
    ) -> None:
        ledger.on_error(_event("ev-1"), DeliveryError(UNAUTHORIZED, "ev-1", status_code=401))
        assert ledger.halted
        assert ledger.key_refused is not None
        assert ledger.dead.written == 0
        assert ledger.pending == 2  # left for a --resume run with the right key

    def test_key_refused_after_a_delivery_is_a_dead_letter(self, ledger: Ledger) -> None:
        ledger.on_success(_event("ev-1"))
        ledger.on_error(_event("ev-2"), DeliveryError(UNAUTHORIZED, "ev-2", status_code=401))
        assert not ledger.halted
        assert ledger.failed == {UNAUTHORIZED: 1}
        assert ledger.dead.written == 1
        assert ledger.pending == 0

    @pytest.mark.parametrize("interrupted", [True, False])
    def test_shutdown_drops_stay_pending_only_when_interrupted(
        self, ledger: Ledger, interrupted: bool
    ) -> None:
        ledger.interrupted = interrupted
        ledger.on_error(_event("ev-1"), DeliveryError(SHUTDOWN, "ev-1"))
        if interrupted:
            assert (ledger.dead.written, ledger.pending, ledger.failed) == (0, 2, {})
        else:
            assert (ledger.dead.written, ledger.pending, ledger.failed) == (1, 1, {SHUTDOWN: 1})
