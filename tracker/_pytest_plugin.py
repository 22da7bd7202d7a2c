"""pytest plugin (entry point ``pytest11``): the ``fake_px`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tracker.testing import FakePX


@pytest.fixture
def fake_px() -> Iterator[FakePX]:
    """A started FakePX on a free loopback port, accepting any API key; stopped after."""
    with FakePX() as px:
        yield px
