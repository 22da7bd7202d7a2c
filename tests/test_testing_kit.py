"""FakePX itself: answers like PX, records what arrived, injects faults on demand."""

from __future__ import annotations

import json
import threading
import time
from email.utils import parsedate_to_datetime
from importlib.metadata import entry_points
from typing import Any

import pytest
import requests

from tracker.testing import FakePX, RecordedRequest

from ._support import wait_until

EVENT = {"identifyId": "u1", "propertyKey": "AP-1", "userType": "USER", "eventName": "signup"}


def post(px: FakePX, body: Any = EVENT, key: str | None = "k", **kwargs: Any) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-APTRINSIC-API-KEY"] = key
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(
        px.url + "/v1/events/custom", data=data, headers=headers, timeout=5, **kwargs
    )


class TestAnswersLikePX:
    def test_valid_event_gets_201_with_pxs_body_and_is_recorded(self, fake_px: FakePX) -> None:
        response = post(fake_px)
        assert response.status_code == 201
        assert response.json() == {"body": {}, "statusCode": "CREATED", "statusCodeValue": 201}
        assert fake_px.events == [EVENT]
        (request,) = fake_px.requests
        assert (request.method, request.path, request.status) == ("POST", "/v1/events/custom", 201)
        assert request.body == EVENT
        assert request.headers["x-aptrinsic-api-key"] == "k"  # case-insensitive
        assert request.arrived_at <= request.answered_at

    def test_missing_or_wrong_key_is_401_in_pxs_error_shape(self) -> None:
        with FakePX(api_key="right") as px:
            for key in (None, "wrong"):
                response = post(px, key=key)
                assert response.status_code == 401
                error = response.json()["externalapierror"]
                assert error["status"] == "UNAUTHORIZED"
                assert "Authentication failed" in error["message"]
            assert post(px, key="right").status_code == 201
            assert len(px.events) == 1

    def test_any_key_is_accepted_when_none_is_configured(self, fake_px: FakePX) -> None:
        assert post(fake_px, key="whatever").status_code == 201

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            (b"{not json", "body is not valid JSON"),
            ([1, 2], "body must be a JSON object"),
            ({**EVENT, "identifyId": ""}, "identifyId must not be null or empty"),
            ({k: v for k, v in EVENT.items() if k != "eventName"}, "eventName must not be null"),
            ({**EVENT, "userType": "ADMIN"}, "userType must be one of"),
            ({**EVENT, "date": "yesterday"}, "date must be an integer"),
            ({**EVENT, "attributes": [1]}, "attributes must be an object"),
        ],
    )
    def test_invalid_bodies_get_400_naming_the_problem(
        self, fake_px: FakePX, body: Any, problem: str
    ) -> None:
        response = post(fake_px, body=body)
        assert response.status_code == 400
        error = response.json()["externalapierror"]
        assert error["status"] == "BAD_REQUEST"
        assert any(problem in sub["message"] for sub in error["subErrors"])
        assert fake_px.events == []

    def test_other_paths_and_methods(self, fake_px: FakePX) -> None:
        assert requests.post(fake_px.url + "/v1/other", json=EVENT, timeout=5).status_code == 404
        response = requests.get(fake_px.url + "/v1/events/custom", timeout=5)
        assert response.status_code == 405
        assert response.headers["Allow"] == "POST"

    def test_keep_alive_connections_are_reused_and_fast(self, fake_px: FakePX) -> None:
        with requests.Session() as session:
            headers = {"X-APTRINSIC-API-KEY": "k"}
            started = time.monotonic()
            for _ in range(50):
                response = session.post(
                    fake_px.url + "/v1/events/custom", json=EVENT, headers=headers, timeout=5
                )
                assert response.status_code == 201
            elapsed = time.monotonic() - started
        assert len({r.client_port for r in fake_px.requests}) == 1
        # Nagle + delayed ACK would cost ~40 ms a request (2 s here); one send avoids it.
        assert elapsed < 1.5, elapsed


class TestFaults:
    def test_fail_rate_answers_500_and_can_change_while_running(self, fake_px: FakePX) -> None:
        fake_px.fail_rate = 1.0
        response = post(fake_px)
        assert response.status_code == 500
        assert response.json()["externalapierror"]["status"] == "INTERNAL_SERVER_ERROR"
        fake_px.fail_rate = 0.0
        assert post(fake_px).status_code == 201

    def test_a_seed_makes_faults_reproducible(self) -> None:
        def statuses(seed: int) -> list[int]:
            with FakePX(fail_rate=0.5, seed=seed) as px:
                return [post(px).status_code for _ in range(30)]

        first = statuses(11)
        assert first == statuses(11)
        assert 500 in first
        assert 201 in first

    def test_rate_limit_allows_a_seconds_burst_then_429_with_retry_after(self) -> None:
        with FakePX(rate_limit=5, retry_after=3) as px:
            responses = [post(px) for _ in range(7)]
        assert [r.status_code for r in responses[:5]] == [201] * 5
        limited = [r for r in responses[5:] if r.status_code == 429]
        assert limited  # 7 requests in far less than the 0.2 s one token takes
        assert limited[0].headers["Retry-After"] == "3"
        assert limited[0].json()["externalapierror"]["status"] == "TOO_MANY_REQUESTS"

    def test_retry_after_can_be_omitted_or_a_date(self) -> None:
        with FakePX(rate_limit=1, retry_after=None) as px:
            post(px)
            response = post(px)
            assert response.status_code == 429
            assert "Retry-After" not in response.headers
            px.retry_after = "date"
            response = post(px)
            assert response.status_code == 429
            when = parsedate_to_datetime(response.headers["Retry-After"])
            assert 1 <= when.timestamp() - time.time() <= 3

    def test_latency_delays_every_answer(self, fake_px: FakePX) -> None:
        fake_px.latency = 0.2
        started = time.monotonic()
        assert post(fake_px).status_code == 201
        assert time.monotonic() - started >= 0.19

    def test_drop_rate_closes_the_connection_without_an_answer(self, fake_px: FakePX) -> None:
        fake_px.drop_rate = 1.0
        with pytest.raises(requests.ConnectionError):
            post(fake_px)
        (request,) = fake_px.requests
        assert request.status is None
        assert fake_px.events == []

    def test_scripted_answers_come_first_in_order(self, fake_px: FakePX) -> None:
        fake_px.respond_next(503, times=2)
        fake_px.respond_next(429, headers={"Retry-After": "7"}, body={"custom": True})
        fake_px.respond_next(418, body="teapot")
        codes = [post(fake_px) for _ in range(5)]
        assert [r.status_code for r in codes] == [503, 503, 429, 418, 201]
        assert codes[2].headers["Retry-After"] == "7"
        assert codes[2].json() == {"custom": True}
        assert codes[3].text == "teapot"
        assert codes[0].json()["externalapierror"]["status"] == "SERVICE_UNAVAILABLE"

    def test_a_scripted_2xx_records_the_event(self, fake_px: FakePX) -> None:
        fake_px.respond_next(200, body=b"")
        assert post(fake_px).status_code == 200
        assert fake_px.events == [EVENT]

    def test_hold_keeps_requests_unanswered_until_release(self, fake_px: FakePX) -> None:
        fake_px.hold()
        results: list[int] = []
        client = threading.Thread(target=lambda: results.append(post(fake_px).status_code))
        client.start()
        assert wait_until(lambda: fake_px.in_progress == 1, timeout=5)
        assert results == []
        fake_px.release()
        client.join(5)
        assert results == [201]
        assert fake_px.in_progress == 0


class TestRecording:
    def test_wait_for_find_and_clear(self, fake_px: FakePX) -> None:
        assert fake_px.wait_for(1, timeout=0.05) is False
        threading.Timer(0.1, lambda: post(fake_px, body={**EVENT, "eventName": "later"})).start()
        assert fake_px.wait_for(1, timeout=5) is True
        post(fake_px)
        assert [e["eventName"] for e in fake_px.find("later")] == ["later"]
        assert len(fake_px.find("signup")) == 1
        fake_px.clear()
        assert fake_px.events == []
        assert fake_px.requests == []

    def test_the_api_key_is_masked_in_reprs(self, fake_px: FakePX) -> None:
        post(fake_px, key="sk-mask-me-42")
        (request,) = fake_px.requests
        assert isinstance(request, RecordedRequest)
        assert "sk-mask-me-42" not in repr(request)
        assert request.headers["X-APTRINSIC-API-KEY"] == "sk-mask-me-42"

    def test_on_request_sees_every_request(self) -> None:
        seen: list[RecordedRequest] = []
        with FakePX(on_request=seen.append) as px:
            post(px)
            post(px, key=None)
        assert [r.status for r in seen] == [201, 401]


class TestLifecycle:
    def test_start_stop_and_a_fixed_port(self) -> None:
        px = FakePX()
        with pytest.raises(RuntimeError, match="not started"):
            _ = px.url
        px.start()
        port = px.port
        assert px.url == f"http://127.0.0.1:{port}"
        assert post(px).status_code == 201
        px.stop()
        px.stop()  # idempotent
        with pytest.raises(requests.ConnectionError):
            requests.post(f"http://127.0.0.1:{port}/v1/events/custom", json=EVENT, timeout=2)
        again = FakePX(port=port).start()  # the same port can be taken again at once
        try:
            assert again.port == port
        finally:
            again.stop()

    def test_stop_closes_kept_alive_connections(self) -> None:
        with requests.Session() as session:
            px = FakePX().start()
            url = px.url + "/v1/events/custom"
            headers = {"X-APTRINSIC-API-KEY": "k"}
            assert session.post(url, json=EVENT, headers=headers, timeout=5).status_code == 201
            px.stop()
            with pytest.raises(requests.ConnectionError):
                session.post(url, json=EVENT, headers=headers, timeout=5)
            assert len(px.events) == 1


class TestPytestPlugin:
    def test_registered_through_the_pytest11_entry_point(self) -> None:
        found = entry_points()
        # Python 3.9 answers a dict of groups; 3.10+ a selectable collection.
        group = found.select(group="pytest11") if hasattr(found, "select") else found["pytest11"]
        plugins = {e.value for e in group}
        assert "tracker._pytest_plugin" in plugins

    def test_fixture_gives_a_started_server(self, fake_px: FakePX) -> None:
        assert fake_px.url.startswith("http://127.0.0.1:")
        assert post(fake_px).status_code == 201
