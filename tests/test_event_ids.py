"""Event ids: fresh UUID4s, unique in every process, whatever forked it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from tracker import Tracker

from ._support import API_KEY, PRODUCT_KEY, clean_env


@pytest.fixture
def dry() -> Iterator[Tracker]:
    """Validates and counts, sends nothing."""
    tracker = Tracker(API_KEY, product_key=PRODUCT_KEY, send=False, flush_at_exit=False)
    yield tracker
    tracker.shutdown(0)


class TestEventId:
    def test_default_is_a_fresh_uuid4(self, dry: Tracker) -> None:
        ids = {dry.track("u1", "e") for _ in range(1000)}
        assert len(ids) == 1000
        for event_id in list(ids)[:50]:
            assert uuid.UUID(str(event_id)).version == 4

    def test_ids_do_not_depend_on_the_global_random_seed(self, dry: Tracker) -> None:
        random.seed(7)
        first = dry.track("u1", "e")
        random.seed(7)
        assert dry.track("u1", "e") != first

    @pytest.mark.parametrize(
        "fork",
        [
            # libc's fork, as uWSGI forks its workers from C: Python's os.register_at_fork
            # hooks never run, each worker starts with a copy of the generator's state.
            "ctypes.CDLL(None, use_errno=True).fork",
            "os.fork",
        ],
        ids=["c-fork-no-python-hooks", "os-fork"],
    )
    def test_ids_are_unique_across_forked_processes_and_their_children(self, fork: str) -> None:
        script = textwrap.dedent(
            f"""
            import ctypes, json, os
            from tracker import Tracker
            t = Tracker({API_KEY!r}, product_key={PRODUCT_KEY!r}, send=False, flush_at_exit=False)
            first = t.track("u", "before_fork")
            fork = {fork}
            read_end, write_end = os.pipe()
            children = []
            for _ in range(3):
                pid = fork()
                if pid == 0:
                    os.close(read_end)
                    # Forking again before drawing an id: the grandchild inherits the
                    # state the parent seeded, as the child does.
                    grandchild = fork()
                    ids = [t.track("u", "in_child") for _ in range(50)]
                    os.write(write_end, (json.dumps(ids) + "\\n").encode())
                    if grandchild:
                        os.waitpid(grandchild, 0)
                    os._exit(0)
                assert pid > 0, ctypes.get_errno()
                children.append(pid)
            os.close(write_end)
            parent = [t.track("u", "in_parent") for _ in range(50)]
            with os.fdopen(read_end) as lines:
                others = [json.loads(line) for line in lines]
            for pid in children:
                os.waitpid(pid, 0)
            print(json.dumps({{"parent": [first, *parent], "others": others}}))
            """
        )
        environment = clean_env()
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert [len(ids) for ids in report["others"]] == [50] * 6  # 3 children, 3 grandchildren
        ids = report["parent"] + [i for ids in report["others"] for i in ids]
        repeated = len(ids) - len(set(ids))
        assert repeated == 0, f"{repeated} of {len(ids)} ids were produced more than once"
        assert all(uuid.UUID(i).version == 4 for i in ids)
