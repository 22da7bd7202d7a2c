"""The real-nginx harness: limit_req as configured, proxying to FakePX, started and stopped."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from typing import Callable

import pytest
import requests

from tracker.testing import FakePX

from ._nginx import Nginx, find_nginx, nginx_fixture, pipeline  # noqa: F401 (the fixture)

EVENT = {"identifyId": "u1", "propertyKey": "AP-1", "userType": "USER", "eventName": "signup"}
KEY = "sk-nginx-test-key-1"

MakeNginx = Callable[..., Nginx]

# Every directive that names a file or directory nginx writes (else a built-in root path).
FILE_DIRECTIVES = {
    "pid",
    "lock_file",
    "error_log",
    "access_log",
    "client_body_temp_path",
    "proxy_temp_path",
    "fastcgi_temp_path",
    "uwsgi_temp_path",
    "scgi_temp_path",
    "root",
}


def post(url: str, key: str = KEY, session: requests.Session | None = None) -> requests.Response:
    send = session.post if session is not None else requests.post
    return send(
        url + "/v1/events/custom",
        data=json.dumps(EVENT),
        headers={"Content-Type": "application/json", "X-APTRINSIC-API-KEY": key},
        timeout=10,
    )


class TestLimitReq:
    def test_burst_0_at_200_per_second_rejects_the_second_of_two_back_to_back(
        self, nginx: MakeNginx
    ) -> None:
        server = nginx(rate=200, burst=0)
        first, second = pipeline(server.port, [KEY, KEY])
        assert (first.status, second.status) == (201, 429)
        assert json.loads(first.body) == {
            "body": {},
            "statusCode": "CREATED",
            "statusCodeValue": 201,
        }
        assert [(r.status, r.limit_req) for r in server.records(at_least=2)] == [
            (201, "PASSED"),
            (429, "REJECTED"),
        ]

    def test_the_limit_is_kept_per_api_key_and_requests_without_one_pass(
        self, nginx: MakeNginx
    ) -> None:
        server = nginx(rate=200, burst=0)
        answers = pipeline(server.port, ["key-a", "key-b", "key-a", "key-b", None, None])
        assert [a.status for a in answers] == [201, 201, 429, 429, 201, 201]

    def test_nodelay_answers_burst_plus_one_at_once_like_fakepxs_leaky_bucket(
        self, nginx: MakeNginx
    ) -> None:
        # 2 r/s leaks one request in 500 ms: far longer than these requests take.
        server = nginx(rate=2, burst=5, nodelay=True)
        from_nginx = [a.status for a in pipeline(server.port, [KEY] * 7)]
        with FakePX(rate_limit=2, limiter="leaky", burst=5) as px:
            from_fakepx = [post(px.url).status_code for _ in range(7)]
        assert from_nginx == from_fakepx == [201] * 6 + [429]

    def test_without_nodelay_requests_within_the_burst_are_held_not_refused(
        self, nginx: MakeNginx
    ) -> None:
        # 2 r/s, burst 2: of 5 requests at once one passes, two wait ~0.5 s and ~1 s, two
        # are over the burst (their arrival spread would have to pass 0.5 s to change it).
        server = nginx(rate=2, burst=2)
        statuses: list[int] = []
        barrier = threading.Barrier(5)

        def client() -> None:
            barrier.wait()
            statuses.append(post(server.url).status_code)

        clients = [threading.Thread(target=client) for _ in range(5)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(10)
        assert sorted(statuses) == [201, 201, 201, 429, 429]
        logged = server.records(at_least=5)
        assert Counter(r.limit_req for r in logged) == {"PASSED": 1, "DELAYED": 2, "REJECTED": 2}
        waits = sorted(r.request_time for r in logged if r.limit_req == "DELAYED")
        assert waits[0] >= 0.4
        assert waits[1] >= 0.9

    @pytest.mark.parametrize("retry_after", [1, None])
    def test_retry_after_is_sent_with_limit_reqs_429s_only_when_configured(
        self, nginx: MakeNginx, retry_after: int | None
    ) -> None:
        server = nginx(rate=200, burst=0, retry_after=retry_after)
        passed, limited = pipeline(server.port, [KEY, KEY])
        assert (passed.status, limited.status) == (201, 429)
        assert "retry-after" not in passed.headers
        if retry_after is None:
            assert "retry-after" not in limited.headers
        else:
            assert limited.headers["retry-after"] == "1"


class TestProxyToFakePX:
    def test_requests_reach_fakepx_over_one_kept_alive_upstream_connection(
        self, nginx: MakeNginx
    ) -> None:
        with FakePX(api_key=KEY) as px:
            server = nginx(rate=200, burst=50, upstream_port=px.port)
            with requests.Session() as session:
                responses = [post(server.url, session=session) for _ in range(5)]
            assert [r.status_code for r in responses] == [201] * 5
            assert responses[0].json() == {
                "body": {},
                "statusCode": "CREATED",
                "statusCodeValue": 201,
            }
            assert px.events == [EVENT] * 5
            assert {r.headers["X-APTRINSIC-API-KEY"] for r in px.requests} == {KEY}
            assert len({r.client_port for r in px.requests}) == 1
            # FakePX's own answers pass through: a wrong key is FakePX's 401.
            refused = post(server.url, key="wrong")
            assert refused.status_code == 401
            assert refused.json()["externalapierror"]["status"] == "UNAUTHORIZED"

    def test_requests_nginx_rejects_never_reach_fakepx(self, nginx: MakeNginx) -> None:
        with FakePX() as px:
            server = nginx(rate=1, burst=0, upstream_port=px.port, retry_after=1)
            answers = pipeline(server.port, [KEY] * 3)
            assert [a.status for a in answers] == [201, 429, 429]
            assert len(px.requests) == 1

    def test_fakepx_latency_shows_as_the_round_trip_through_nginx(self, nginx: MakeNginx) -> None:
        with FakePX(latency=0.05) as px:
            server = nginx(rate=200, burst=50, upstream_port=px.port)
            started = time.monotonic()
            assert post(server.url).status_code == 201
            assert time.monotonic() - started >= 0.05
            (logged,) = server.records(at_least=1)
            assert logged.request_time >= 0.05


class TestLifecycle:
    def test_stop_ends_the_process_and_frees_the_port(self, nginx: MakeNginx) -> None:
        server = nginx()
        process, port = server.process, server.port
        assert process is not None
        assert server.running
        assert (server.directory / "nginx.pid").read_text().strip() == str(process.pid)
        server.stop()
        assert process.returncode == 0
        assert not server.running
        assert not (server.directory / "nginx.pid").exists()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        server.stop()  # idempotent

    def test_everything_it_writes_stays_in_its_directory_and_holds_no_key(
        self, nginx: MakeNginx
    ) -> None:
        server = nginx(rate=200, burst=0, log_rejections=True)
        pipeline(server.port, [KEY, KEY])
        server.stop()
        paths = {
            words[0]: words[1]
            for words in (line.strip().rstrip(";").split() for line in server.config().splitlines())
            if words and words[0] in FILE_DIRECTIVES
        }
        assert set(paths) == FILE_DIRECTIVES
        for directive, path in paths.items():
            assert path.startswith(f"{server.directory}/"), (directive, path)
        for path in server.directory.rglob("*"):
            if path.is_file():
                assert KEY not in path.read_text(errors="replace"), path
        assert "limiting requests" in server.error_log()

    def test_a_config_nginx_refuses_fails_the_start_with_its_message(
        self, nginx: MakeNginx
    ) -> None:
        with pytest.raises(RuntimeError, match="invalid rate"):
            nginx(rate=0)

    def test_two_servers_run_side_by_side(self, nginx: MakeNginx) -> None:
        first, second = nginx(), nginx(rate=1)
        assert first.port != second.port
        assert pipeline(first.port, [KEY])[0].status == 201
        assert pipeline(second.port, [KEY])[0].status == 201


def test_nginx_is_found_in_usr_sbin_when_that_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if find_nginx() != "/usr/sbin/nginx":
        pytest.skip("nginx is not installed as /usr/sbin/nginx (Debian: apt-get install -y nginx)")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_nginx() == "/usr/sbin/nginx"
