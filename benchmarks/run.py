"""The benchmark runner: ``python -m benchmarks [--quick] [--json] [--case NAME ...]``.

Every case runs ours and its baselines interleaved in the same run, takes the median of
the repetitions and reports ours / baseline as the headline ratio, with the absolute
medians beside it. Progress goes to stderr; the Markdown table (or, with ``--json``,
the JSON document) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from benchmarks._common import NOT_INSTALLED, Row, Settings, log
from benchmarks.cases import CASES


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "note": "the loopback servers and the client share these cores",
    }


def _source() -> dict[str, Any]:
    """The commit benchmarked, and whether tracker/ had uncommitted changes (read-only git
    commands; empty when this is not a git checkout)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "--short", "HEAD"),
            "tracker_dirty": bool(git("status", "--porcelain", "--", "tracker")),
        }
    except (OSError, subprocess.SubprocessError):
        return {}


def _versions() -> dict[str, str]:
    from importlib import metadata  # noqa: PLC0415

    out = {}
    for dist in ("px-tracker", "requests", "segment-analytics-python", "posthog"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = NOT_INSTALLED
    return out


def _fmt(value: Optional[float], digits: int) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _cells(row: Row) -> list[str]:
    unit = f" {row.unit}" if row.unit else ""
    ours = _fmt(row.ours_median, row.digits) + unit
    if row.baseline_status is not None:
        base = ratio = row.baseline_status
    elif row.baseline_median is None:
        base, ratio = "—", "—"
    else:
        base = _fmt(row.baseline_median, row.digits) + unit
        ratio = "—" if row.ratio is None else f"**{row.ratio:.2f}x**"
    if row.goal is None:
        goal, met = "—", "—"
    else:
        goal = row.goal.text
        met = {True: "yes", False: "**NO**", None: "n/a"}[row.met]
    return [row.case, row.metric, row.baseline, ratio, ours, base, goal, met]


def markdown(rows: list[Row]) -> str:
    head = [
        "case",
        "metric",
        "baseline",
        "ratio ours/baseline",
        "ours (median)",
        "baseline (median)",
        "goal",
        "met",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="px-tracker against its baselines (Segment, PostHog, plain requests), "
        "interleaved in one run; medians and ratios as a Markdown table.",
    )
    parser.add_argument(
        "--case",
        action="append",
        metavar="NAME",
        help=f"run only this case (repeatable, or comma-separated): {', '.join(CASES)}",
    )
    parser.add_argument("--quick", action="store_true", help="fewer reps and events (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument(
        "--save-json", type=Path, metavar="PATH", help="also write the JSON document to PATH"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="run nothing: render a saved JSON document (from --json/--save-json) again",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        default=None,
        help="also write pyinstrument/tracemalloc profiles of ours to DIR",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    names: list[str] = []
    for item in args.case or []:
        names += [name.strip() for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    args.cases = names or list(CASES)
    return args


def _tables(rows: list[Row]) -> list[str]:
    """The tables a case attached to a row's extra (``{"title", "header", "rows"}``, e.g.
    limiters' cell by cell), each once, after the main table and its notes."""
    out: list[str] = []
    seen: set[str] = set()
    for row in rows:
        table = row.extra.get("table")
        if not table or table["title"] in seen:
            continue
        seen.add(table["title"])
        header = table["header"]
        out += ["", f"{table['title']}:", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(cells) + " |" for cells in table["rows"]]
    return out


def render(document: dict[str, Any]) -> str:
    """The Markdown report of a JSON document: a header line, the table, one line per
    figure on what it measures, failed cases."""
    rows = [Row.from_json(row) for row in document["rows"]]
    machine, settings = document["machine"], document["settings"]
    mode = "--quick" if settings["quick"] else "full run"
    source = document.get("source") or {}
    commit = source.get("commit", "unknown")
    if source.get("tracker_dirty"):
        commit += " + uncommitted changes in tracker/"
    out = [
        f"{document['date']} — px-tracker at {commit}; "
        f"{machine['cores']} cores, Python {machine['python']}, "
        f"load average at start {machine['loadavg']} ({machine['note']}); {mode}, "
        f"{settings['reps']} reps ({settings['hot_reps']} for hot_path/memory), "
        f"runtime {document['runtime_s']:.0f} s",
        "",
        markdown(rows),
    ]
    seen: set[tuple[str, str]] = set()
    notes = []
    for row in rows:
        key = (row.case, row.explain)
        if row.explain and key not in seen:
            seen.add(key)
            notes.append(f"- {row.case} / {row.metric}: {row.explain}")
    if notes:
        out += ["", *notes]
    out += _tables(rows)
    for name, error in document["failed_cases"].items():
        out += ["", f"case {name} FAILED: {error}"]
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.quick_run(args.reps) if args.quick else Settings.full(args.reps)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = _machine()
    source = _source()
    started = time.perf_counter()
    rows: list[Row] = []
    failures: dict[str, str] = {}
    for name in args.cases:
        log(f"case {name} ...")
        case_started = time.perf_counter()
        try:
            rows += CASES[name](settings)
        except Exception as exc:  # one broken case must not cost the others
            failures[name] = f"{type(exc).__name__}: {exc}"
            log(f"case {name} FAILED: {failures[name]}")
        log(f"case {name} done in {time.perf_counter() - case_started:.1f}s")
    if args.profile is not None:
        log("profiles ...")
        from benchmarks.profiling import run_profiles  # noqa: PLC0415

        run_profiles(args.profile)
    runtime = time.perf_counter() - started
    log(f"total runtime {runtime:.1f}s")
    return {
        "date": date,
        "machine": machine,
        "versions": _versions(),
        "source": source,
        "settings": asdict(settings),
        "runtime_s": runtime,
        "rows": [row.to_json() for row in rows],
        "failed_cases": failures,
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    if args.from_json is not None:
        document = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        document = run(args)
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if args.save_json is not None:
        args.save_json.write_text(text + "\n", encoding="utf-8")
    print(text if args.json else render(document))
    return 1 if document["failed_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
