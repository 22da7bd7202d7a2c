"""Django: the app in INSTALLED_APPS configures the tracker from the PX_TRACKER setting,
views track with ``tracker.track``, and the exit flush delivers (no shutdown wiring).

Each case runs tests/apps/django_site.py in a fresh interpreter: Django's settings can be
configured only once per process, and the exit flush is only seen when a process exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Callable

import pytest

from tracker.testing import FakePX

from ._support import API_KEY, APPS, clean_env, one

pytest.importorskip("django", reason="Django is not installed (pip install 'px-tracker[dev]')")


def run_site(
    options: Any, *users: str, before_exit: Callable[[], None] = lambda: None
) -> list[dict[str, Any]]:
    """Run the site; ``before_exit`` runs once it printed its last line (or failed)."""
    with subprocess.Popen(
        [sys.executable, str(APPS / "django_site.py"), json.dumps(options), *users],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1]["kind"] in ("config", "error"):
                break
        before_exit()
        _, stderr = proc.communicate("exit\n", timeout=60)
    assert proc.returncode == 0, f"site failed ({proc.returncode}):\n{stderr}"
    return lines


def test_views_track_and_the_exit_flush_delivers_with_the_settings_options() -> None:
    # This FakePX answers 401 to any other key: the API key came from PX_TRACKER. It
    # holds every request until the site has served its views, so the events are still
    # pending when the site's main code ends: the exit flush is what delivers them.
    with FakePX(api_key=API_KEY) as px:
        url = px.url
        options = {"api_key": API_KEY, "product_key": "AP-DJANGO-1", "base_url": url, "workers": 2}
        px.hold()
        lines = run_site(options, "alice", "bob", before_exit=px.release)
        # The site has exited; FakePX recorded the events before answering.
        events = px.find("django view")
    requests = [line for line in lines if line["kind"] == "request"]
    assert [r["status"] for r in requests] == [200, 200]
    assert sorted(e["eventId"] for e in events) == sorted(r["event_id"] for r in requests)
    assert sorted(e["identifyId"] for e in events) == ["alice", "bob"]
    assert {e["propertyKey"] for e in events} == {"AP-DJANGO-1"}
    assert {e["attributes"]["path"] for e in events} == {"/track/"}
    config = one(lines, "config")
    assert (config["base_url"], config["workers"]) == (url, 2)
    assert config["pending"] == 2


def test_allow_insecure_http_from_the_settings_is_honoured() -> None:
    insecure = {"api_key": API_KEY, "product_key": "AP-1", "base_url": "http://px.example.com"}
    refused = one(run_site(insecure), "error")
    assert refused["type"] == "ImproperlyConfigured"
    assert refused["message"].startswith("PX_TRACKER: ")
    assert "allow_insecure_http" in refused["message"]

    config = one(run_site({**insecure, "allow_insecure_http": True}), "config")
    assert config["allow_insecure_http"] is True
    assert config["base_url"] == "http://px.example.com"


def test_an_unknown_option_stops_startup_naming_it() -> None:
    error = one(run_site({"api_key": API_KEY, "product_key": "AP-1", "colour": "red"}), "error")
    assert error["type"] == "ImproperlyConfigured"
    assert "colour" in error["message"]


def test_a_setting_that_is_not_a_dict_stops_startup() -> None:
    error = one(run_site(["not", "a", "dict"]), "error")
    assert error == {
        "kind": "error",
        "type": "ImproperlyConfigured",
        "message": "PX_TRACKER must be a dict of Tracker options (got list)",
    }


def test_without_the_setting_the_tracker_comes_from_the_environment() -> None:
    # No PX_TRACKER and no PX_API_KEY: startup succeeds (nothing configured yet) and the
    # first track() raises ConfigError from the view, as without the app.
    proc = subprocess.run(
        [sys.executable, str(APPS / "django_site.py"), "null", "carol"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr
    assert "PX_API_KEY" in proc.stderr
