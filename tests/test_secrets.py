"""Secret hygiene: the API key never leaves through logs, reprs, errors, callbacks or stats,
even when the server echoes it back in every error it sends; plain http:// is refused
for anything but loopback unless explicitly allowed."""

from __future__ import annotations

import json
import logging
import pickle
import random
import traceback
from typing import Any, Callable, Optional

import pytest

from tracker import ConfigError, CustomEvent, DeliveryError, Tracker
from tracker.testing import API_KEY_HEADER, FakePX, px_error

from ._rawserver import RawServer
from ._support import PRODUCT_KEY, Recorder, recorded_tracker

KEY = "sk-LEAK-CANARY-9f3b"
# Any piece of the key would be a leak, a truncated one included: look for its middle.
FRAGMENT = "LEAK"


def echo_bodies(key: str) -> list[Any]:
    return [
        px_error(401, f"Authentication failed for key {key}", [f"key {key} is not valid"]),
        f"Authentication failed: invalid API key {key}",
        f"<html><body><h1>Forbidden</h1><p>key={key}</p><!-- {key} --></body></html>",
        {"message": f"bad key {key}", "error": key, "detail": key},
        key,
        # cut at 300 characters, a message truncated before redaction would keep "sk-LEAK"
        "x" * 290 + key + " and more",
        {"externalapierror": {"status": "BAD", "message": None, "debugMessage": key}},
    ]


class EchoingPX(FakePX):
    """Every fault on (seeded): 10% 500s, 5% 429s, 5% 401s, 2% dropped connections, each
    error answer echoing the API key the request carried, in its body and a header."""

    def __init__(self, seed: int = 7) -> None:
        super().__init__(api_key=KEY, fail_rate=0.10, drop_rate=0.02, retry_after=0.05, seed=seed)
        self._faults = random.Random(seed)
        self.echoed = 0

    def _decide(
        self, method: str, path: str, headers: Any, raw: bytes, now: float
    ) -> tuple[Optional[int], dict[str, str], Any, float]:
        status, extra, body, latency = super()._decide(method, path, headers, raw, now)
        roll = self._faults.random()
        if status == 201 and roll < 0.05:
            status, extra = 429, self._retry_after_header()
        elif status == 201 and roll < 0.10:
            status = 401
        if status is not None and status >= 400:
            sent = headers.get(API_KEY_HEADER, "")
            bodies = echo_bodies(sent)
            body = bodies[self._faults.randrange(len(bodies))]
            extra["X-Echo-Key"] = sent
            self.echoed += sent == KEY
        return status, extra, body, latency


def texts_of(value: Any) -> list[str]:
    return [str(value), repr(value)]


def assert_no_key(texts: list[str]) -> None:
    leaks = [text for text in texts if KEY in text or FRAGMENT in text]
    assert leaks == [], f"the API key leaked in {len(leaks)} place(s), first: {leaks[0][:500]!r}"


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("tracker", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


class TestKeyNeverLeaks:
    def test_not_in_logs_reprs_errors_callbacks_or_stats_when_the_server_echoes_it(
        self, everything_logged: pytest.LogCaptureFixture
    ) -> None:
        seen: list[str] = []
        errors: list[DeliveryError] = []

        def on_error(event: CustomEvent, error: DeliveryError) -> None:
            errors.append(error)
            seen.extend(texts_of(event) + texts_of(error) + texts_of(error.args))
            seen.extend([json.dumps(event.to_dict()), str(error.message)])
            seen.extend(texts_of(pickle.loads(pickle.dumps(error))))
            raise RuntimeError("a callback that fails gets logged with its traceback")

        def on_success(event: CustomEvent) -> None:
            seen.extend(texts_of(event))

        server = EchoingPX()
        with server as px:
            t = Tracker(
                KEY,
                product_key=PRODUCT_KEY,
                base_url=px.url,
                max_retries=2,
                rate_limit=None,
                backoff_base=0.01,
                backoff_max=0.02,
                on_error=on_error,
                on_success=on_success,
                flush_at_exit=False,
            )
            try:
                for i in range(150):
                    t.track(f"user-{i}", "secret-test", attributes={"i": i})
                assert t.flush(timeout=60)
                seen += texts_of(t) + texts_of(t.config) + texts_of(t.stats())
            finally:
                t.shutdown(timeout=5)
            seen += texts_of(t) + texts_of(t.stats())
            statuses = {r.status for r in px.requests}
            keys_sent = {r.headers.get(API_KEY_HEADER) for r in px.requests}
            echoed = server.echoed

        # The canary was really in play: sent, echoed back, and failures reported.
        assert keys_sent == {KEY}
        assert {401, 429, 500, None} <= statuses
        assert echoed > 20
        assert {e.reason for e in errors} >= {"unauthorized"}
        assert any(e.message for e in errors if e.reason == "unauthorized")
        records = everything_logged.records
        assert any(r.name.startswith("urllib3") and r.levelno == logging.DEBUG for r in records)
        assert any(r.name == "tracker" and r.levelno == logging.DEBUG for r in records)
        assert any(r.exc_info for r in records)  # the failing callback's traceback

        logged = [everything_logged.text]
        for record in records:
            logged += [record.getMessage(), repr(record.args)]
            if record.exc_info:
                logged.append("".join(traceback.format_exception(*record.exc_info)))
        assert_no_key(logged)
        assert_no_key(seen)

    @pytest.mark.parametrize(
        "bad_key",
        [
            KEY + "\n",
            KEY[:7] + "\n" + KEY[7:],
            KEY + " trailing words",
            "\t" + KEY,
            KEY + "é",
            KEY + "\x7f",
            KEY + "\x00",
            KEY + "\r\nX-Injected: 1",
        ],
        ids=["newline", "inner-newline", "space", "tab", "non-ascii", "del", "nul", "crlf"],
    )
    def test_config_error_for_a_malformed_key_does_not_echo_it(self, bad_key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            Tracker(bad_key, product_key=PRODUCT_KEY, base_url="http://127.0.0.1:9")
        exc = caught.value
        assert "api_key" in str(exc)
        texts = texts_of(exc) + texts_of(exc.args)
        texts.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        assert_no_key(texts)

    def test_config_error_for_a_malformed_key_from_the_environment_does_not_echo_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PX_API_KEY", KEY[:7] + "\n" + KEY[7:])
        with pytest.raises(ConfigError) as caught:
            Tracker(product_key=PRODUCT_KEY, base_url="http://127.0.0.1:9")
        assert_no_key(texts_of(caught.value) + texts_of(caught.value.args))

    def test_repr_of_a_tracker_configured_from_the_environment_hides_the_key(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PX_API_KEY", KEY)
        with Tracker(
            product_key=PRODUCT_KEY, base_url="http://127.0.0.1:9", flush_at_exit=False
        ) as t:
            assert t.config.api_key == KEY
            assert_no_key(texts_of(t) + texts_of(t.config) + texts_of(t.stats()))


def logged_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Everything the log records could show: messages, arguments, tracebacks."""
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args)]
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    return texts


def echo_tracker(server: RawServer, recorder: Recorder, **options: Any) -> Tracker:
    return recorded_tracker(
        server.url, recorder, KEY, backoff_base=0.01, backoff_max=0.02, **options
    )


class TestServerBytesInErrors:
    """Texts built from what a server sent, not only its response bodies, are redacted."""

    def test_a_first_line_that_is_not_http_echoing_the_key_is_redacted(
        self, raw_server: Callable[..., RawServer], everything_logged: pytest.LogCaptureFixture
    ) -> None:
        # issue 9 item 1: http.client's BadStatusLine(<the line>), wrapped by requests in
        # a ConnectionError, reached the log and DeliveryError's message unredacted.
        server = raw_server([], default="not_http")
        recorder = Recorder()
        with echo_tracker(server, recorder, max_retries=1) as t:
            event_id = t.track("u", "echoed")
            assert t.flush(timeout=10)
            stats = t.stats()
        assert [s.key for s in server.seen] == [KEY, KEY]  # the key went out, and came back
        (error,) = recorder.errors
        assert (error.reason, error.event_id, error.attempts) == ("retries_exhausted", event_id, 2)
        assert error.message is not None
        assert "***" in error.message  # the echo, redacted
        assert stats.failed_by_reason["retries_exhausted"] == 1
        assert_no_key(texts_of(error) + texts_of(error.args) + [str(error.message)])
        assert_no_key(texts_of(pickle.loads(pickle.dumps(error))))
        assert_no_key(logged_texts(everything_logged))

    def test_header_lines_no_parser_accepts_echoing_the_key_stay_out_of_the_log(
        self, raw_server: Callable[..., RawServer], everything_logged: pytest.LogCaptureFixture
    ) -> None:
        # issue 9 item 12: urllib3 logs "Failed to parse headers ... unparsed data: '...'"
        # at WARNING, server bytes and all; the tracker notes the answer itself (DEBUG,
        # without the bytes) and configures no logging of the application's.
        server = raw_server([], default="bad_headers")
        recorder = Recorder()
        with echo_tracker(server, recorder) as t:
            event_id = t.track("u", "odd-headers")
            assert t.flush(timeout=10)
        assert recorder.errors == []
        assert recorder.delivered == [event_id]  # a 201 is a 201
        assert [s.key for s in server.seen] == [KEY]
        urllib3_records = [r for r in everything_logged.records if r.name.startswith("urllib3")]
        assert urllib3_records, "urllib3 logged nothing at DEBUG: the log was not captured"
        assert not [r for r in urllib3_records if r.levelno >= logging.WARNING]
        assert_no_key(logged_texts(everything_logged))
        for name in ("tracker", "urllib3"):  # nothing configured for the application
            handlers = logging.getLogger(name).handlers
            assert all(type(h) is logging.NullHandler for h in handlers), (name, handlers)


NON_LOOPBACK_HTTP = [
    "http://example.com",
    "http://api.aptrinsic.com",
    "http://10.0.0.5:8080",
    "http://192.168.1.1/px",
    "http://0.0.0.0:8080",
    "http://[2001:db8::1]:8080",
    "http://127.0.0.1.example.com",
    "http://localhost.example.com",
    "http://127.0.0.1@example.com",
]
LOOPBACK_HTTP = [
    "http://127.0.0.1:9",
    "http://127.8.9.10:9",
    "http://localhost:9",
    "http://LOCALHOST:9",
    "http://app.localhost:9",
    "http://[::1]:9",
    "http://user@127.0.0.1:9",
]


class TestPlainHttp:
    @pytest.mark.parametrize("url", NON_LOOPBACK_HTTP)
    def test_non_loopback_http_is_refused(self, url: str) -> None:
        with pytest.raises(ConfigError, match="base_url") as caught:
            Tracker(KEY, product_key=PRODUCT_KEY, base_url=url)
        assert_no_key(texts_of(caught.value))

    @pytest.mark.parametrize("url", NON_LOOPBACK_HTTP)
    def test_non_loopback_http_is_allowed_with_allow_insecure_http(self, url: str) -> None:
        with Tracker(
            KEY,
            product_key=PRODUCT_KEY,
            base_url=url,
            allow_insecure_http=True,
            flush_at_exit=False,
        ) as t:
            assert t.config.base == url.rstrip("/")

    def test_allow_insecure_http_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PX_BASE_URL", "http://example.com")
        with pytest.raises(ConfigError, match="base_url"):
            Tracker(KEY, product_key=PRODUCT_KEY)
        monkeypatch.setenv("PX_ALLOW_INSECURE_HTTP", "1")
        with Tracker(KEY, product_key=PRODUCT_KEY, flush_at_exit=False) as t:
            assert t.config.endpoint == "http://example.com/v1/events/custom"

    @pytest.mark.parametrize("url", LOOPBACK_HTTP)
    def test_loopback_http_needs_no_permission(self, url: str) -> None:
        with Tracker(KEY, product_key=PRODUCT_KEY, base_url=url, flush_at_exit=False) as t:
            assert t.config.base == url

    def test_https_to_any_host_needs_no_permission(self) -> None:
        with Tracker(
            KEY, product_key=PRODUCT_KEY, base_url="https://px.example.com", flush_at_exit=False
        ) as t:
            assert t.config.endpoint == "https://px.example.com/v1/events/custom"
