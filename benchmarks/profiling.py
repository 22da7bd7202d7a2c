"""pyinstrument profiles of ours, for explaining a missed goal: ``python -m benchmarks
--profile DIR`` or ``python -m benchmarks.profiling [DIR]``.

pyinstrument samples the thread that started it, so the sending path (which runs on
worker threads) is profiled through ``sync_mode=True``: the same Sender and Transport
code, run on the calling thread.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Optional

from benchmarks._common import (
    HERE,
    ServerProcess,
    dead_url,
    log,
    our_tracker,
    retrying_tracker,
    track_many,
    wait_until,
)
from tracker import Tracker


def _profiler() -> Any:
    try:
        from pyinstrument import Profiler  # noqa: PLC0415
    except ImportError:
        return None
    return Profiler(interval=0.0002)


def _profile_tracking(tracker: Tracker, count: int) -> tuple[Any, float]:
    """``count`` calls of the benchmarked track() under a started profiler; the profiler
    and the wall time they took."""
    profiler = _profiler()
    started = time.perf_counter()
    profiler.start()
    track_many(tracker, count)
    profiler.stop()
    return profiler, time.perf_counter() - started


def _save(profiler: Any, path: Path, title: str) -> None:
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    path.write_text(f"# {title}\n\n{text}", encoding="utf-8")
    log(f"  profile written: {path}")


def _memory_sites(directory: Path, n: int = 3000) -> None:
    """tracemalloc's top allocation sites of ours' retained memory: events just queued,
    then the same events once all wait for a retry (server unreachable)."""
    tracemalloc.start()
    # rate_limit=0.001: one request, then the senders wait: nothing else is attempted.
    tracker = our_tracker(dead_url(), max_queue_size=n + 1000, rate_limit=0.001)
    retrying = retrying_tracker(n)
    lines: list[str] = []
    for title, subject in (("queued, not attempted", tracker), ("waiting to retry", retrying)):
        gc.collect()
        before = tracemalloc.take_snapshot()
        track_many(subject, n)
        if subject is retrying:
            wait_until(lambda: retrying.stats().retries >= n, timeout=120)
            time.sleep(0.2)
        gc.collect()
        after = tracemalloc.take_snapshot()
        diffs = after.compare_to(before, "lineno")
        total = sum(d.size_diff for d in diffs)
        lines.append(f"## {title}: {total / n:.0f} bytes per event ({n:,} events)\n")
        for diff in diffs[:10]:
            frame = diff.traceback[0]
            lines.append(
                f"{diff.size_diff / n:8.1f} B/event  {diff.count_diff / n:5.2f} blocks/event  "
                f"{frame.filename.replace(str(HERE.parent) + '/', '')}:{frame.lineno}"
            )
        lines.append("")
    tracemalloc.stop()
    tracker.shutdown(timeout=0)
    retrying.shutdown(timeout=0)
    path = directory / "memory_sites.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    log(f"  profile written: {path}")


def run_profiles(directory: Path, calls: int = 20_000, sends: int = 2_000) -> bool:
    """Write ``hot_path_caller.txt``, ``sender_sync_mode.txt`` and ``memory_sites.txt``
    into ``directory``."""
    if _profiler() is None:
        log("pyinstrument is not installed: pip install pyinstrument")
        return False
    directory.mkdir(parents=True, exist_ok=True)
    with ServerProcess("fakepx") as px:
        # 1. The caller's side of track(), default tracker, senders running.
        tracker = our_tracker(px.url, max_queue_size=calls + 1000)
        profiler, wall = _profile_tracking(tracker, calls)
        tracker.shutdown(timeout=0)
        px.clear()
        _save(
            profiler,
            directory / "hot_path_caller.txt",
            f"{calls:,} track() calls, default Tracker against FakePX (own process): "
            f"{wall / calls * 1e6:.2f} µs/call under the profiler",
        )

        # 2. One delivery attempt per event, on this thread (what each worker runs).
        tracker = our_tracker(px.url, rate_limit=None, sync_mode=True)
        profiler, wall = _profile_tracking(tracker, sends)
        tracker.shutdown()
        px.clear()
        _save(
            profiler,
            directory / "sender_sync_mode.txt",
            f"{sends:,} events sent with sync_mode=True (the workers' Sender/Transport path) "
            f"to FakePX (own process): {wall / sends * 1e3:.3f} ms/event under the profiler",
        )
    _memory_sites(directory)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m benchmarks.profiling [DIR]`` (default: benchmarks/profiles)."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else HERE / "profiles"
    return 0 if run_profiles(directory) else 1


if __name__ == "__main__":
    sys.exit(main())
