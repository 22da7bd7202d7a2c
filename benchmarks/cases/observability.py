"""What issue 15 (request figures, health, metrics) costs track(): this tree against the
tree before it, and with a Prometheus scrape running against without, in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from benchmarks._common import (
    HERE,
    Goal,
    Row,
    ServerProcess,
    Settings,
    Variant,
    column,
    interleave,
    log,
)

#: The commit before the request figures went in (main when issue 15 started); the env
#: variable picks another one to compare against.
BASELINE_REF = os.environ.get("PX_BENCH_BASELINE_REF", "bebaeed")
ROOT = HERE.parent


def _baseline_tree(into: Path) -> Path:
    """``tracker/`` as it was at BASELINE_REF, unpacked under ``into`` (read-only git)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", BASELINE_REF, "tracker"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # a Python from before the extraction filters
            tar.extractall(into)
    return into


def _child(tree: Path, url: str, calls: int, scrape: bool) -> dict[str, float]:
    script = HERE / "_obs_child.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tree), url, str(calls), "1" if scrape else "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=tempfile.gettempdir(),  # so the child imports tracker from ``tree`` only
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    imported = Path(str(result.pop("tracker_file"))).resolve()
    if tree.resolve() not in imported.parents:
        raise RuntimeError(f"the child imported {imported}, not the tree {tree}")
    if result["refused"]:
        raise RuntimeError(f"{result['refused']} calls were refused: queue too small")
    return result


def observability(settings: Settings) -> list[Row]:
    calls = settings.hot_calls
    with tempfile.TemporaryDirectory() as tmp, ServerProcess("fakepx") as px:
        before = _baseline_tree(Path(tmp))
        log(f"  [observability] baseline: tracker/ at {BASELINE_REF}")
        variants: dict[str, Variant] = {
            "this tree": lambda: _child(ROOT, px.url, calls, scrape=False),
            "scraped": lambda: _child(ROOT, px.url, calls, scrape=True),
            "before": lambda: _child(before, px.url, calls, scrape=False),
        }
        results = interleave("observability", settings.hot_reps, variants)
    explain = (
        f"{calls:,} back-to-back track() calls in a fresh process, senders delivering to "
        "FakePX meanwhile; medians of the interleaved repetitions"
    )
    rows: list[Row] = []
    for key, metric in (("us_per_call", "track() wall time"), ("cpu_us_per_call", "caller CPU")):
        rows.append(
            Row(
                "observability",
                metric,
                "µs/call",
                column(results["this tree"], key),
                baseline=f"tracker/ at {BASELINE_REF}",
                baseline_samples=column(results["before"], key),
                goal=Goal("no cost on the fast path (<= 1.1x)", "ratio", "<=", 1.1),
                explain=explain,
            )
        )
        rows.append(
            Row(
                "observability",
                f"{metric}, scraped every 50 ms",
                "µs/call",
                column(results["scraped"], key),
                baseline="this tree, not scraped",
                baseline_samples=column(results["this tree"], key),
                goal=Goal("a scrape costs track() little (<= 1.2x)", "ratio", "<=", 1.2),
                explain="same, a thread rendering the Prometheus exposition every 50 ms",
            )
        )
    return rows
