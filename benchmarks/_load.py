"""The host_app case's load generator, in its own process: a closed loop of N clients.

    python -m benchmarks._load URL --clients N --duration S [--warmup S] [--stats PATH]

Each client is a thread with one ``http.client`` connection that GETs ``URL`` again as
soon as the previous answer is read (it keeps the connection alive whenever the server
allows; gunicorn's sync worker closes it after each answer, and the client then opens a
new one, as a browser or a proxy would). After ``--warmup`` seconds of unmeasured load,
the requests answered within the next ``--duration`` seconds are counted. Prints one JSON
line: ``{"requests", "requests_per_s", "p50_ms", "p99_ms", "errors", "all_requests"}``
(``all_requests``: answered with 200 in all, the warm-up and the tail included). With
``--stats PATH``, one more client GETs PATH on the same server as the window opens and as
it closes, and the two JSON answers come as ``stats_start`` and ``stats_end``: what the
app did within the window (its CPU time, what its SDK delivered), not over the warm-up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from typing import Optional
from urllib.parse import urlsplit


def _client(
    host: str,
    port: int,
    path: str,
    window: tuple[float, float],
    latencies: list[float],
    errors: list[int],
    answered: list[int],
) -> None:
    start, end = window
    conn = http.client.HTTPConnection(host, port, timeout=30)
    perf = time.perf_counter
    mine: list[float] = []
    failed = total = 0
    while True:
        sent = perf()
        if sent >= end:
            break
        try:
            conn.request("GET", path, headers={"Connection": "keep-alive"})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()  # a fresh connection next time
            ok = False
        done = perf()
        total += ok
        if sent >= start and done <= end:
            if ok:
                mine.append(done - sent)
            else:
                failed += 1
    conn.close()
    latencies.extend(mine)  # list.extend is atomic under the GIL
    errors.append(failed)
    answered.append(total)


def _stats_at(
    host: str, port: int, path: str, moments: list[float], out: list[dict[str, object]]
) -> None:
    """GET ``path`` at each of ``moments`` (perf_counter), the parsed answers into ``out``,
    each with ``read_at``: when it was read (it may queue behind the clients' requests)."""
    for moment in moments:
        time.sleep(max(0.0, moment - time.perf_counter()))
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}")
            answer = json.loads(body)
            answer["read_at"] = time.perf_counter()
            out.append(answer)
        finally:
            conn.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._load")
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--stats", default=None, help="a path to GET as the window opens/closes")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    start = time.perf_counter() + args.warmup
    window = (start, start + args.duration)
    latencies: list[float] = []
    errors: list[int] = []
    answered: list[int] = []
    threads = [
        threading.Thread(
            target=_client,
            args=(host, port, path, window, latencies, errors, answered),
        )
        for _ in range(args.clients)
    ]
    stats: list[dict[str, object]] = []
    if args.stats is not None:
        threads.append(
            threading.Thread(target=_stats_at, args=(host, port, args.stats, list(window), stats))
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    report: dict[str, object] = {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / args.duration,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "errors": sum(errors),
        "all_requests": sum(answered),
    }
    if args.stats is not None:
        if len(stats) != 2:  # the thread's error is on stderr
            print(f"the app's {args.stats} was not read twice", file=sys.stderr)
            return 1
        report["stats_start"], report["stats_end"] = stats
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
