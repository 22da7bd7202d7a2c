"""Benchmarks of px-tracker against Segment's and PostHog's Python SDKs and plain
``requests`` loops: ``python -m benchmarks --help``; results in benchmarks/RESULTS.md.

Needs the peers for their columns: ``pip install -e '.[bench]'`` (without them those
columns say "not installed").
"""

from __future__ import annotations
