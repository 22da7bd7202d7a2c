"""`tracker spool status|drain DIR` and `tracker send --spool DIR`, as functions."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tracker.cli import _spool as _spool_commands
from tracker.cli import main
from tracker.testing import FakePX

from ._support import API_KEY, FAST_RETRY, clean_env, spool_tracker, wait_until
from .test_spool import leave_events, rows_on_disk

ROOT = Path(__file__).parent.parent


def run_status(directory: Path, as_json: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = _spool_commands.status(str(directory), as_json=as_json, out=out)
    return code, out.getvalue()


class TestStatus:
    def test_an_empty_directory_and_a_missing_one(self, tmp_path: Path) -> None:
        assert run_status(tmp_path) == (0, f"{tmp_path}: no spool files\n")
        assert run_status(tmp_path / "nope")[0] == 2

    def test_files_of_gone_and_live_processes(self, fake_px: FakePX, tmp_path: Path) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, tmp_path, 12, **FAST_RETRY)
        live = spool_tracker(fake_px.url, tmp_path / "other", spool_interval=0, **FAST_RETRY)
        try:
            live.track("live", "e")
            code, text = run_status(tmp_path / "other", as_json=True)
            (f,) = json.loads(text)["files"]
            assert (code, f["owner"], f["pid"], f["events"]) == (0, "live", os.getpid(), 1)
        finally:
            live.shutdown(timeout=0)
        code, text = run_status(tmp_path, as_json=True)
        report = json.loads(text)
        (f,) = report["files"]
        assert (f["owner"], f["events"], report["events"]) == ("gone", 12, 12)
        assert f["bytes"] > 0
        assert f["oldest_age"] >= 0
        code, text = run_status(tmp_path)
        assert "gone" in text
        assert "12 event(s) waiting in 1 file(s); 12 of processes that are gone" in text
        assert rows_on_disk(tmp_path) == 12  # looking changes nothing

    def test_corrupt_files_are_listed(self, tmp_path: Path) -> None:
        (tmp_path / "h-1-aa.spool.corrupt").write_bytes(b"junk")
        code, text = run_status(tmp_path)
        assert code == 0
        assert "h-1-aa.spool.corrupt" in text
        assert "corrupt" in text


class TestDrain:
    def test_drain_sends_everything_left_and_exits_0(self, fake_px: FakePX, tmp_path: Path) -> None:
        fake_px.fail_rate = 1.0
        ids = leave_events(fake_px.url, tmp_path, 10, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        out = io.StringIO()
        code = _spool_commands.drain(
            str(tmp_path), api_key=API_KEY, options={"base_url": fake_px.url}, out=out
        )
        assert code == 0
        assert "10 event(s) found, 10 delivered, 0 failed, 0 still waiting" in out.getvalue()
        assert sorted(e["eventId"] for e in fake_px.events) == sorted(ids)
        assert [p for p in tmp_path.iterdir() if p.suffix == ".spool"] == []

    def test_drain_exits_1_when_events_are_rejected(self, fake_px: FakePX, tmp_path: Path) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, tmp_path, 3, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        fake_px.respond_next(400, times=3)
        code = _spool_commands.drain(
            str(tmp_path), api_key=API_KEY, options={"base_url": fake_px.url}, out=io.StringIO()
        )
        assert code == 1

    def test_drain_without_a_key_exits_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert _spool_commands.drain(str(tmp_path), api_key=None, out=io.StringIO()) == 2
        assert "'api_key' is required" in capsys.readouterr().err


SEND_CHILD = """
import sys
from tracker.cli import _spool as _spool_commands
from tracker.cli import main
from tracker.cli._jsonl import event_arguments, parse_line
sys.exit(_spool_commands.send(
    sys.argv[1], sys.argv[2], api_key="k-send",
    to_arguments=lambda b: event_arguments(parse_line(b)),
    options={"base_url": sys.argv[3], "product_key": "AP-1", "rate_limit": None,
             "max_queue_size": 100}, timeout=60))
"""


class TestSendWithSpool:
    def test_a_killed_upload_resumes_after_its_last_accepted_line(self, tmp_path: Path) -> None:
        source = tmp_path / "events.jsonl"
        lines = 3000
        source.write_text(
            "".join(
                json.dumps({"identifyId": f"u{i}", "eventName": "e"}) + "\n" for i in range(lines)
            )
        )
        spool = tmp_path / "spool"
        env = clean_env(PYTHONPATH=str(ROOT))
        with FakePX(latency=0.005) as px:
            args = [sys.executable, "-c", SEND_CHILD, str(source), str(spool), px.url]
            first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wait_until(lambda: len(px.events) >= 200, timeout=30)
            first.send_signal(signal.SIGKILL)
            first.communicate()
            sent_first = len(px.events)
            assert sent_first < lines
            done = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, done.stderr
            resumed = int(done.stdout.split("resumed after line ")[1].split(",")[0])
            assert 0 < resumed < lines
            assert f"{lines - resumed} read" in done.stdout
            ids: dict[str, set[str]] = defaultdict(set)
            for e in px.events:
                ids[e["identifyId"]].add(e["eventId"])
        assert set(ids) == {f"u{i}" for i in range(lines)}
        # Lines read again (not recovered) are those accepted after the last committed
        # mark: one commit's worth at most, never the whole file.
        again = [u for u, event_ids in ids.items() if len(event_ids) > 1]
        assert len(again) < 500
        # A complete run forgets its progress: the same file is sent afresh next time.
        with FakePX() as px:
            args[-1] = px.url
            done = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, done.stderr
            assert "resumed after line 0" in done.stdout
            assert len(px.events) == lines

    def test_an_unreadable_source_exits_2(self, tmp_path: Path) -> None:
        code = _spool_commands.send(
            str(tmp_path / "missing.jsonl"),
            str(tmp_path),
            api_key="k",
            to_arguments=lambda b: {},
            out=io.StringIO(),
        )
        assert code == 2


class TestCommandLine:
    """The same commands through `tracker spool ...` and `tracker send --spool`."""

    def test_status_through_the_command_line(
        self, fake_px: FakePX, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, tmp_path, 4, **FAST_RETRY)
        assert main(["spool", "status", str(tmp_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["events"], report["files"][0]["owner"]) == (4, "gone")

    def test_drain_through_the_command_line_never_prints_the_key(
        self,
        fake_px: FakePX,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        fake_px.fail_rate = 1.0
        ids = leave_events(fake_px.url, tmp_path, 6, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        key_file = tmp_path / "key"
        key_file.write_text(API_KEY + "\n")
        monkeypatch.delenv("PX_API_KEY", raising=False)
        argv = ["spool", "drain", str(tmp_path), "--api-key-file", str(key_file)]
        assert main([*argv, "--base-url", fake_px.url, "--timeout", "30"]) == 0
        out, err = capsys.readouterr()
        assert "6 event(s) found, 6 delivered, 0 failed, 0 still waiting" in out
        assert sorted(e["eventId"] for e in fake_px.events) == sorted(ids)
        assert API_KEY not in out + err

    def test_usage_errors_exit_2_naming_what_is_missing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("PX_API_KEY", raising=False)
        assert main(["spool"]) == 2
        assert "tracker spool status DIR" in capsys.readouterr().err
        assert main(["spool", "drain", str(tmp_path)]) == 2
        assert "no API key" in capsys.readouterr().err
        source = tmp_path / "in.jsonl"
        source.write_text("")
        for extra, named in (
            (["--resume"], "--resume"),
            (["--local"], "--local"),
            (["--dead-letter", str(tmp_path / "d")], "--dead-letter"),
        ):
            argv = ["send", str(source), "--spool", str(tmp_path / "s"), *extra]
            assert main([*argv, "--api-key", "k-cli-spool-1"]) == 2
            assert f"{named} does not go with --spool" in capsys.readouterr().err
        assert main(["send", "-", "--spool", str(tmp_path), "--api-key", "k-cli-spool-1"]) == 2
        assert "--spool needs a file" in capsys.readouterr().err

    def test_send_through_a_spool_from_the_command_line(
        self, fake_px: FakePX, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        source = tmp_path / "events.jsonl"
        rows = [
            {"identifyId": f"u{i}", "eventName": "cli", "eventId": f"id-{i}"} for i in range(20)
        ]
        source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
        argv = ["send", str(source), "--spool", str(tmp_path / "spool"), "--base-url", fake_px.url]
        argv += ["--api-key-file", str(tmp_path / "key"), "--product-key", "AP-CLI", "-q"]
        (tmp_path / "key").write_text(API_KEY)
        assert main(argv) == 1  # one bad line
        out, err = capsys.readouterr()
        assert "20 delivered, 0 failed, 1 bad line(s), 0 left" in out, err
        assert "line 21" in err
        assert sorted(e["eventId"] for e in fake_px.events) == sorted(r["eventId"] for r in rows)
        assert {e["propertyKey"] for e in fake_px.events} == {"AP-CLI"}
