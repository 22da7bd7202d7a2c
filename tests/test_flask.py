"""Flask: init_app(app) configures the tracker from app.config; views track, Flask's test
client drives them, the events reach FakePX."""

from __future__ import annotations

import pytest

import tracker
from tracker import ConfigError
from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY

flask = pytest.importorskip("flask", reason="Flask is not installed: pip install 'px-tracker[dev]'")

from tracker.integrations.flask import init_app, options_from_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_default")


def make_app(**config: object) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(config)

    @app.get("/signup/<user>")
    def signup(user: str) -> dict[str, object]:
        return {"event_id": tracker.track(user, "flask signup", attributes={"plan": "pro"})}

    return app


def test_views_track_and_events_arrive(fake_px: FakePX) -> None:
    app = make_app(
        PX_TRACKER={
            "api_key": API_KEY,
            "product_key": "AP-FLASK-1",
            "base_url": fake_px.url,
            "flush_at_exit": False,
        }
    )
    t = init_app(app)
    assert app.extensions["px_tracker"] is t is tracker.default_tracker()
    client = app.test_client()
    ids = [client.get(f"/signup/user-{i}").get_json()["event_id"] for i in range(3)]
    assert all(ids)
    assert tracker.flush(timeout=30) is True
    events = fake_px.find("flask signup")
    assert sorted(e["eventId"] for e in events) == sorted(ids)
    assert {e["propertyKey"] for e in events} == {"AP-FLASK-1"}
    assert {e["attributes"]["plan"] for e in events} == {"pro"}
    assert t.stats().delivered == 3


def test_env_named_keys_are_read_like_the_environment(fake_px: FakePX) -> None:
    app = make_app(
        PX_API_KEY=API_KEY,
        PX_PRODUCT_KEY="AP-FROM-KEYS",
        PX_BASE_URL=fake_px.url,
        PX_WORKERS="3",  # strings parsed as the environment variable would be
        PX_ALLOW_INSECURE_HTTP="yes",
        PX_RATE_LIMIT="off",
        PX_TRACKER={"flush_at_exit": False},
    )
    t = init_app(app)
    config = t.config
    assert (config.workers, config.allow_insecure_http, config.rate_limit) == (3, True, None)
    app.test_client().get("/signup/dora")
    assert t.flush(timeout=30) is True
    assert [e["propertyKey"] for e in fake_px.find("flask signup")] == ["AP-FROM-KEYS"]


def test_the_dict_wins_over_the_env_named_keys(fake_px: FakePX) -> None:
    app = make_app(
        PX_API_KEY=API_KEY,
        PX_PRODUCT_KEY="AP-LOSES",
        PX_WORKERS=2,  # not a string: passed as it is
        PX_TRACKER={"product_key": PRODUCT_KEY, "base_url": fake_px.url, "flush_at_exit": False},
    )
    t = init_app(app)
    assert (t.config.product_key, t.config.workers, t.config.base_url) == (
        PRODUCT_KEY,
        2,
        fake_px.url,
    )


def test_a_bad_value_names_the_config_key() -> None:
    with pytest.raises(ConfigError, match=r"'workers' \(from PX_WORKERS\) must be an int"):
        init_app(make_app(PX_API_KEY=API_KEY, PX_WORKERS="many"))
    with pytest.raises(ConfigError, match=r"app.config\['PX_TRACKER'\] must be a dict"):
        options_from_config({"PX_TRACKER": "api_key=x"})


def test_unrelated_config_is_ignored() -> None:
    assert options_from_config({"SECRET_KEY": "s", "PX_SLOW": "1", "DEBUG": True}) == {}
