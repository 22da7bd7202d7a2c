"""The ``tracker`` command line, run for real in subprocesses against FakePX."""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

from tracker import Tracker, __version__
from tracker.testing import FakePX

from ._support import clean_env

SECRET = "sk-SECRET-1234"
PRODUCT = "AP-CLI-TEST-1"


def check_output_is_clean(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert "Traceback" not in text


def run_cli(
    *args: str,
    env: Optional[dict[str, str]] = None,
    stdin: Optional[str] = None,
    cwd: Optional[Path] = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tracker ARGS``; every run is checked for a leaked key or traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        env=clean_env() if env is None else env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    check_output_is_clean(proc.stdout, proc.stderr)
    return proc


def event_line(i: int, **fields: Any) -> dict[str, Any]:
    return {"identifyId": f"user-{i}", "eventName": "Imported", **fields}


def write_jsonl(path: Path, lines: Iterable[Any], mode: str = "w") -> Path:
    with path.open(mode, encoding="utf-8") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def send_env(**extra: str) -> dict[str, str]:
    return clean_env(**{"PX_API_KEY": SECRET, "PX_PRODUCT_KEY": PRODUCT, **extra})


def identify_ids(px: FakePX) -> list[str]:
    return sorted(event["identifyId"] for event in px.events)


@pytest.fixture
def px() -> Iterator[FakePX]:
    """A FakePX in the test process that only accepts SECRET."""
    with FakePX(api_key=SECRET) as server:
        yield server


def send(px: FakePX, path: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``tracker send`` to ``px``, unpaced (FakePX has no limit) for speed."""
    kwargs.setdefault("env", send_env())
    return run_cli("send", str(path), "--base-url", px.url, "--rate-limit", "0", *args, **kwargs)


class LineReader:
    """The lines of a child's pipe, read on a thread so a test can wait with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)

    def next(self, timeout: float = 15) -> str:
        line = self.lines.get(timeout=timeout)
        self.seen.append(line)
        return line

    def rest(self) -> str:
        self._thread.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


# -- general -------------------------------------------------------------------------------


class TestEntryPoints:
    def test_version_prints_the_package_version(self) -> None:
        proc = run_cli("--version")
        assert proc.returncode == 0
        assert __version__ in proc.stdout

    def test_console_script_is_the_same_command(self) -> None:
        script = Path(sys.executable).parent / "tracker"
        if not script.exists():
            pytest.skip("console script not installed next to this interpreter")
        proc = subprocess.run(
            [str(script), "--version"], capture_output=True, text=True, env=clean_env(), check=False
        )
        assert proc.returncode == 0
        assert __version__ in proc.stdout

    @pytest.mark.parametrize(
        "args",
        [[], ["launch"], ["send"], ["demo", "--events", "0"], ["serve", "--retry-after", "soon"]],
    )
    def test_usage_errors_exit_2(self, args: list[str]) -> None:
        proc = run_cli(*args)
        assert proc.returncode == 2
        assert proc.stderr.strip()


# -- tracker demo --------------------------------------------------------------------------


class TestDemo:
    def test_nothing_lost_through_500s_drops_and_latency(self) -> None:
        proc = run_cli(
            "demo", "--events", "300", "--threads", "3", "--rate-limit", "1000", "--seed", "7",
            "--json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report["tracked"] == report["delivered"] == 300
        assert report["failed"] == report["dropped"] == report["missing"] == 0
        assert report["lost"] is False
        # The faults really happened and were retried through.
        assert report["server"]["responses"]["201"] == 300
        assert report["server"]["responses"].get("500", 0) > 0
        assert report["retried"] > 0
        assert report["server"]["requests"] > 300
        latency = report["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert report["throughput_eps"] > 0
        assert proc.stderr == ""  # no progress bar when stderr is not a terminal

    def test_human_report_on_stdout(self) -> None:
        proc = run_cli("demo", "--events", "60", "--threads", "2", "--rate-limit", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for word in ("tracked", "delivered", "retried", "429s seen", "failed", "dropped"):
            assert word in proc.stdout
        assert "events/s" in proc.stdout
        assert "p50" in proc.stdout
        assert "p99" in proc.stdout
        assert "nothing lost" in proc.stdout

    def test_lost_events_exit_1(self) -> None:
        proc = run_cli(
            "demo", "--events", "20", "--fail-rate", "1", "--max-retries", "0", "--rate-limit",
            "0", "--json",
        )  # fmt: skip
        assert proc.returncode == 1
        report = json.loads(proc.stdout)
        assert report["lost"] is True
        assert report["failed"] == 20
        assert report["failed_by_reason"] == {"retries_exhausted": 20}
        assert report["missing"] == 20


# -- tracker send --------------------------------------------------------------------------


class TestSend:
    def test_delivers_camel_and_snake_case_lines(self, px: FakePX, tmp_path: Path) -> None:
        source = write_jsonl(
            tmp_path / "events.jsonl",
            [
                event_line(1, date="2024-01-02T03:04:05Z", attributes={"plan": "pro"}),
                {
                    "identify_id": "user-2",
                    "event_name": "Imported",
                    "date": 1700000000000,
                    "property_key": "AP-OTHER-2",
                    "user_type": "LEAD",
                    "global_context": {"env": "test"},
                },
                "",  # blank lines are skipped
                event_line(3, date="2024-01-02T05:04:05.250+02:00", eventId="ev-3"),
            ],
        )
        proc = send(px, source, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["delivered"] == 3
        assert summary["bad_lines"] == summary["failed"] == 0
        by_user = {event["identifyId"]: event for event in px.events}
        assert by_user["user-1"]["date"] == 1704164645000
        assert by_user["user-1"]["attributes"] == {"plan": "pro"}
        assert by_user["user-1"]["propertyKey"] == PRODUCT  # from PX_PRODUCT_KEY
        assert by_user["user-2"]["date"] == 1700000000000
        assert by_user["user-2"]["propertyKey"] == "AP-OTHER-2"
        assert by_user["user-2"]["userType"] == "LEAD"
        assert by_user["user-2"]["globalContext"] == {"env": "test"}
        assert by_user["user-3"]["date"] == 1704164645250
        assert by_user["user-3"]["eventId"] == "ev-3"
        assert not (tmp_path / "events.jsonl.dead.jsonl").exists()  # nothing to report

    def test_bad_lines_and_rejected_events_go_to_the_dead_letter_file(
        self, px: FakePX, tmp_path: Path
    ) -> None:
        source = write_jsonl(
            tmp_path / "in.jsonl",
            [
                event_line(1, eventId="ev-rejected"),
                "this is not json",
                event_line(3, colour="red"),
                {"identifyId": "user-4"},
                event_line(5),
                event_line(6, date="2024-01-02T03:04:05"),
                [1, 2],
            ],
        )
        px.respond_next(400)  # one worker, in file order: the event of line 1
        proc = send(px, source, "--workers", "1", "--json")
        assert proc.returncode == 1
        summary = json.loads(proc.stdout)
        assert summary["delivered"] == 1
        assert summary["bad_lines"] == 5
        assert summary["failed_by_reason"] == {"rejected": 1}
        assert identify_ids(px) == ["user-5"]
        records = {
            record["line"]: record for record in read_jsonl(tmp_path / "in.jsonl.dead.jsonl")
        }
        assert sorted(records) == [1, 2, 3, 4, 6, 7]
        assert records[1]["reason"] == "rejected"
        assert records[1]["status"] == 400
        assert records[1]["event"]["eventId"] == "ev-rejected"
        assert records[1]["event"]["propertyKey"] == PRODUCT  # the wire form, camelCase
        assert records[2]["raw"] == "this is not json"
        assert records[2]["reason"].startswith("not JSON")
        assert "colour" in records[3]["reason"]
        assert records[3]["event"] == event_line(3, colour="red")  # as read, to fix and replay
        assert "event_name" in records[4]["reason"]
        assert "timezone" in records[6]["reason"]
        assert records[7]["raw"] == "[1, 2]"

    def test_dead_letter_file_sent_again_delivers_its_events(
        self, px: FakePX, tmp_path: Path
    ) -> None:
        source = write_jsonl(
            tmp_path / "in.jsonl", [*(event_line(i) for i in range(1, 5)), "{broken"]
        )
        px.respond_next(400, times=3)  # one worker: the events of lines 1-3
        first = send(px, source, "--workers", "1")
        dead = tmp_path / "in.jsonl.dead.jsonl"
        assert first.returncode == 1
        records = read_jsonl(dead)
        failed = [r for r in records if "event" in r]
        assert [r["line"] for r in failed] == [1, 2, 3]
        assert all(r["reason"] == "rejected" for r in failed)
        assert identify_ids(px) == ["user-4"]

        px.clear()
        again = send(px, dead, "--json")
        assert again.returncode == 1  # the broken line is still broken
        summary = json.loads(again.stdout)
        assert summary["delivered"] == len(failed)
        assert summary["bad_lines"] == 1
        assert sorted(px.event_ids()) == sorted(r["event"]["eventId"] for r in failed)
        (still_bad,) = read_jsonl(tmp_path / "in.jsonl.dead.jsonl.dead.jsonl")
        assert still_bad["raw"] == "{broken"

    def test_resume_skips_lines_an_earlier_run_settled(self, px: FakePX, tmp_path: Path) -> None:
        source = write_jsonl(
            tmp_path / "in.jsonl", [event_line(i) if i != 4 else "oops" for i in range(1, 11)]
        )
        first = send(px, source)
        assert first.returncode == 1
        state = json.loads((tmp_path / "in.jsonl.resume.json").read_text())
        assert state["watermark"] == 10
        assert len(px.events) == 9

        write_jsonl(source, [event_line(i) if i != 13 else "oops" for i in range(11, 16)], mode="a")
        px.clear()
        second = send(px, source, "--resume", "--json")
        assert second.returncode == 1
        summary = json.loads(second.stdout)
        assert summary["skipped"] == 10
        assert identify_ids(px) == ["user-11", "user-12", "user-14", "user-15"]
        dead = read_jsonl(tmp_path / "in.jsonl.dead.jsonl")
        assert [r["line"] for r in dead] == [4, 13]  # appended, not truncated
        assert json.loads((tmp_path / "in.jsonl.resume.json").read_text())["watermark"] == 15

    def test_interrupted_run_resumes_after_its_watermark(self, tmp_path: Path) -> None:
        lines = 100
        source = write_jsonl(tmp_path / "in.jsonl", [event_line(i) for i in range(1, lines + 1)])
        with FakePX(api_key=SECRET, latency=0.05) as slow:
            args = ["send", str(source), "--base-url", slow.url, "--workers", "1"]
            child = subprocess.Popen(
                [sys.executable, "-m", "tracker", *args, "--rate-limit", "0"],
                env=send_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert slow.wait_for(5, timeout=20)
                child.send_signal(signal.SIGINT)
                out, err = child.communicate(timeout=20)
            finally:
                child.kill()
            check_output_is_clean(out, err)
            assert child.returncode == 130, out + err
            assert "--resume" in err
            watermark = json.loads((tmp_path / "in.jsonl.resume.json").read_text())["watermark"]
            assert 5 <= watermark < lines
            first_run = set(identify_ids(slow))
            assert {f"user-{i}" for i in range(1, watermark + 1)} <= first_run

            slow.clear()
            slow.latency = 0
            proc = send(slow, source, "--resume", "--json")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            resent = {int(user.split("-")[1]) for user in identify_ids(slow)}
            assert resent == set(range(watermark + 1, lines + 1))  # at-least-once past it

    def test_reads_stdin_with_dead_letters_in_the_working_directory(
        self, px: FakePX, tmp_path: Path
    ) -> None:
        text = "\n".join([json.dumps(event_line(1)), "nope", json.dumps(event_line(2))]) + "\n"
        proc = send(px, Path("-"), "--json", stdin=text, cwd=tmp_path)
        assert proc.returncode == 1
        summary = json.loads(proc.stdout)
        assert (summary["delivered"], summary["bad_lines"]) == (2, 1)
        assert identify_ids(px) == ["user-1", "user-2"]
        (record,) = read_jsonl(tmp_path / "stdin.dead.jsonl")
        assert record == {"line": 2, "reason": record["reason"], "raw": "nope"}
        assert (tmp_path / "stdin.resume.json").exists()

    def test_refused_api_key_stops_and_resume_with_the_right_key_sends_all(
        self, px: FakePX, tmp_path: Path
    ) -> None:
        source = write_jsonl(tmp_path / "in.jsonl", [event_line(i) for i in range(1, 31)])
        wrong = send(px, source, env=send_env(PX_API_KEY="sk-WRONG-0000"))
        assert wrong.returncode == 2
        assert "refused the API key" in wrong.stderr
        assert "401" in wrong.stderr
        assert not (tmp_path / "in.jsonl.dead.jsonl").exists()  # the key was bad, not the events
        assert px.events == []

        key_file = tmp_path / "key.txt"
        key_file.write_text(SECRET + "\n")
        right = send(
            px,
            source,
            "--resume",
            "--api-key-file",
            str(key_file),
            env=clean_env(PX_PRODUCT_KEY=PRODUCT),
        )
        assert right.returncode == 0, right.stdout + right.stderr
        assert identify_ids(px) == sorted(f"user-{i}" for i in range(1, 31))

    def test_api_key_on_the_command_line_warns_and_is_never_shown(
        self, px: FakePX, tmp_path: Path
    ) -> None:
        source = write_jsonl(tmp_path / "in.jsonl", [event_line(1), event_line(2)])
        px.respond_next(400, body={"message": f"key {SECRET} may not send this"})
        proc = send(
            px, source, "--workers", "1", "--api-key", SECRET, env=clean_env(PX_PRODUCT_KEY=PRODUCT)
        )  # run_cli checks stdout and stderr for the key
        assert proc.returncode == 1
        assert "warning" in proc.stderr
        assert "--api-key" in proc.stderr
        dead = (tmp_path / "in.jsonl.dead.jsonl").read_text()
        assert SECRET not in dead
        assert "***" in dead

    def test_local_sends_to_an_in_process_fake_without_a_key(self, tmp_path: Path) -> None:
        source = write_jsonl(tmp_path / "in.jsonl", [event_line(i) for i in range(5)])
        proc = run_cli("send", str(source), "--local", "--rate-limit", "0", "--json",
                       env=clean_env(PX_PRODUCT_KEY=PRODUCT))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["delivered"] == 5

    @pytest.mark.parametrize("quiet", [False, True])
    def test_progress_bar_on_a_terminal_unless_quiet(self, tmp_path: Path, quiet: bool) -> None:
        fcntl = pytest.importorskip("fcntl")
        pty = pytest.importorskip("pty")
        termios = pytest.importorskip("termios")

        source = write_jsonl(tmp_path / "in.jsonl", [event_line(i) for i in range(20)])
        args = ["send", str(source), "--local", "--rate-limit", "0", *(["-q"] if quiet else [])]
        terminal, child_end = pty.openpty()
        # tqdm draws nothing on a terminal of width 0, which is what a fresh pty reports.
        fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        child = subprocess.Popen(
            [sys.executable, "-m", "tracker", *args],
            env=clean_env(PX_PRODUCT_KEY=PRODUCT),
            stdout=subprocess.PIPE,
            stderr=child_end,
            text=True,
        )
        os.close(child_end)
        drawn = b""
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                if not select.select([terminal], [], [], 0.5)[0]:
                    continue
                try:
                    chunk = os.read(terminal, 4096)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                drawn += chunk
            out, _ = child.communicate(timeout=30)
        finally:
            os.close(terminal)
            child.kill()
        assert child.returncode == 0, out
        if quiet:
            assert drawn == b""
        else:
            assert b"sending" in drawn
            assert b"delivered=20" in drawn

    def test_human_summary(self, px: FakePX, tmp_path: Path) -> None:
        source = write_jsonl(tmp_path / "in.jsonl", [event_line(1), "x"])
        proc = send(px, source)
        assert proc.returncode == 1
        assert "delivered" in proc.stdout
        assert "bad lines" in proc.stdout
        assert "in.jsonl.dead.jsonl" in proc.stdout

    @pytest.mark.parametrize(
        ("setup", "args", "env_extra", "message"),
        [
            (None, ["missing.jsonl"], {"PX_API_KEY": SECRET}, "missing.jsonl"),
            ("ok", ["in.jsonl"], {}, "no API key"),
            ("ok", ["in.jsonl", "--region", "mars"], {"PX_API_KEY": SECRET}, "region"),
            ("ok", ["in.jsonl", "--workers", "0"], {"PX_API_KEY": SECRET}, "workers"),
            ("ok", ["in.jsonl", "--dead-letter", "in.jsonl"], {"PX_API_KEY": SECRET}, "input"),
            ("ok", ["in.jsonl", "--api-key-file", "nokey"], {}, "nokey"),
            (
                "ok",
                ["in.jsonl", "--base-url", "http://example.com"],
                {"PX_API_KEY": SECRET},
                "https",
            ),
        ],
    )
    def test_configuration_and_input_errors_exit_2_with_one_line(
        self,
        tmp_path: Path,
        setup: Optional[str],
        args: list[str],
        env_extra: dict[str, str],
        message: str,
    ) -> None:
        if setup:
            write_jsonl(tmp_path / "in.jsonl", [event_line(1)])
        proc = run_cli(
            "send", *args, env=clean_env(PX_PRODUCT_KEY=PRODUCT, **env_extra), cwd=tmp_path
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("tracker send: error:")
        assert message in lines[0]
        assert proc.stdout == ""
        if setup:
            assert (tmp_path / "in.jsonl").read_text().strip()  # never truncated


# -- tracker serve -------------------------------------------------------------------------


class Served:
    """A ``tracker serve`` child process and its output."""

    def __init__(self, *args: str) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-m", "tracker", "serve", "--port", "0", *args],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out, self._err = LineReader(self.child.stdout), LineReader(self.child.stderr)
        try:
            first = self._out.next()
        except queue.Empty:
            self.stop(signal.SIGKILL)
            raise
        self.url = first.split()[3]
        assert self.url.startswith("http://127.0.0.1:"), first

    def stop(self, sig: int) -> tuple[int, str, str]:
        """Send ``sig``; the exit code, stdout and stderr."""
        self.child.send_signal(sig)
        try:
            code = self.child.wait(timeout=10)
        finally:
            self.child.kill()
            self.child.wait()
        out, err = self._out.rest(), self._err.rest()
        for stream in (self.child.stdout, self.child.stderr):
            if stream is not None:
                stream.close()
        check_output_is_clean(out, err)
        return code, out, err


class TestServe:
    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_answers_like_px_logs_each_request_and_stops_cleanly(
        self, sig: int, make_tracker: Callable[..., Tracker]
    ) -> None:
        served = Served("-v", "--api-key", SECRET)
        try:
            tracker = make_tracker(served.url, api_key=SECRET)
            tracker.track("user-1", "Signed Up")
            tracker.track("user-2", "Signed Up")
            assert tracker.flush(10)
            assert tracker.stats().delivered == 2
            refused = requests.post(
                f"{served.url}/v1/events/custom",
                json={},
                headers={"X-APTRINSIC-API-KEY": "nope"},
                timeout=5,
            )
            assert refused.status_code == 401
        finally:
            code, stdout, stderr = served.stop(sig)
        assert code == 0
        assert stderr.count("POST /v1/events/custom 201 Signed Up") == 2
        assert "POST /v1/events/custom 401" in stderr
        assert "stopped: 3 requests, 2 events accepted" in stdout

    def test_faults_from_the_command_line(self) -> None:
        served = Served("--fail-rate", "1", "--retry-after", "date")
        try:
            body = {"identifyId": "u", "eventName": "e", "propertyKey": "AP-1", "userType": "USER"}
            answer = requests.post(
                f"{served.url}/v1/events/custom",
                json=body,
                headers={"X-APTRINSIC-API-KEY": "k"},
                timeout=5,
            )
        finally:
            code, _, stderr = served.stop(signal.SIGTERM)
        assert answer.status_code == 500
        assert code == 0
        assert stderr == ""  # quiet without -v

    def test_port_in_use_exits_2(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            proc = run_cli("serve", "--port", str(port), timeout=20)
        assert proc.returncode == 2
        assert proc.stderr.startswith("tracker serve: error: cannot listen")
        assert len(proc.stderr.strip().splitlines()) == 1
