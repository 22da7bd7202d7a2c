"""The exchange on a kept-alive connection (tracker/_wire.py): the first request on a
connection goes through urllib3, the later ones through our own reader. Whichever path
an answer comes by, it must end the same way; and the reader itself frames answers as
HTTP/1.1 says, bounded in lines, bytes and time."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from tracker import _wire

from ._rawserver import RawServer
from ._support import API_KEY, FAST_RETRY, Recorder, recorded_tracker

RawServers = Callable[..., RawServer]

# -- the same answer, on a new connection and on a kept-alive one ----------------------------


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The requests our reader exchanged (the first bytes of each)."""
    made: list[bytes] = []
    real = _wire.exchange

    def spy(sock: Any, request: bytes, *args: Any) -> Any:
        made.append(request[:40])
        return real(sock, request, *args)

    monkeypatch.setattr(_wire, "exchange", spy)
    return made


def outcome(
    raw_server: RawServers,
    exchanges: list[bytes],
    behaviours: list[str],
    warm: bool,
    **options: Any,
) -> Any:
    """Track one event answered by ``behaviours`` (then ok), on a new connection or, with
    ``warm``, on the connection an earlier event was delivered on; what came of it."""
    script = (["ok"] if warm else []) + behaviours
    server = raw_server(script, default="ok", keep_alive=warm)
    recorder = Recorder()
    exchanges.clear()
    with recorded_tracker(server.url, recorder, **FAST_RETRY, **options) as t:
        if warm:
            first = t.track("u", "warm-up")
            assert t.flush(timeout=10)
            assert recorder.delivered == [first]
            recorder.delivered.clear()
            assert exchanges == []  # the first request on a connection is urllib3's
        event_id = t.track("u", "hostile")
        assert t.flush(timeout=15)
        stats = t.stats()
    seen = server.seen[1:] if warm else server.seen
    if warm:
        # The hostile answer came on the warm-up's connection, and our reader read it.
        assert seen[0].connection == server.seen[0].connection
        assert len(exchanges) >= 1
    else:
        assert exchanges == []
    errors = [(e.reason, e.status_code, e.attempts) for e in recorder.errors]
    messages = [e.message for e in recorder.errors]
    return (
        errors,
        recorder.delivered == [event_id],
        [s.behaviour for s in seen],
        (stats.retries, stats.rate_limited, stats.delivered - warm),
    ), messages


@pytest.mark.parametrize(
    ("behaviours", "options"),
    [
        (["not_http"], {"max_retries": 1}),
        (["early_hints", "early_hints"], {}),
        (["close_mid_body", "close_mid_body"], {}),
        (["drip_201"], {"timeout": 1.0}),
        (["drip_503"], {"timeout": 1.0}),
        (["bad_zone_429"], {}),
        (["overflow_zone_429"], {}),
        (["bad_headers"], {}),
    ],
)
def test_an_answer_ends_the_same_on_a_new_and_on_a_kept_alive_connection(
    raw_server: RawServers,
    exchanges: list[bytes],
    behaviours: list[str],
    options: dict[str, Any],
) -> None:
    fresh, fresh_messages = outcome(raw_server, exchanges, behaviours, warm=False, **options)
    warm, warm_messages = outcome(raw_server, exchanges, behaviours, warm=True, **options)
    assert warm == fresh
    for message in fresh_messages + warm_messages:
        assert message is None or API_KEY not in message
    if behaviours == ["not_http"]:
        # Named alike on both paths, and redacted: the first line echoed the key.
        for message in fresh_messages + warm_messages:
            assert message is not None
            assert "BadStatusLine" in message
            assert "***" in message


def test_a_kept_alive_connection_carries_the_same_request_head(
    raw_server: RawServers, exchanges: list[bytes]
) -> None:
    server = raw_server([], keep_alive=True)
    recorder = Recorder()
    with recorded_tracker(server.url, recorder) as t:
        for i in range(3):
            t.track("u", f"e{i}")
            assert t.flush(timeout=10)
    assert len(recorder.delivered) == 3
    assert {s.connection for s in server.seen} == {1}
    assert len(exchanges) == 2  # the second and third

    def lines(head: bytes) -> list[str]:
        # Content-Length differs with the body; its place and name must not.
        return [
            "content-length" if line.lower().startswith("content-length:") else line
            for line in head.decode("latin-1").split("\r\n")
        ]

    first, *later = (lines(s.head) for s in server.seen)
    assert all(head == first for head in later)
    assert first[0].startswith("POST /v1/events/custom HTTP/1.1")
    assert first[1] == f"Host: 127.0.0.1:{server.port}"
    assert "Accept-Encoding: identity" in first


def one_then_another(server: RawServer) -> tuple[Recorder, Any]:
    """An event delivered, the server's "then" done (stray bytes sent, or the connection
    closed), a second event flushed; what was recorded (in order) and the stats."""
    recorder = Recorder()
    with recorded_tracker(server.url, recorder, **FAST_RETRY) as t:
        first = t.track("u", "first")
        assert t.flush(timeout=10)
        assert server.done.wait(10)
        second = t.track("u", "second")
        assert t.flush(timeout=10)
        stats = t.stats()
    assert recorder.delivered == [first, second]
    return recorder, stats


def test_bytes_nobody_asked_for_never_pass_for_the_next_answer(
    raw_server: RawServers, exchanges: list[bytes]
) -> None:
    # A second 201 arrives 50 ms after the first event's answer; the next event is
    # refused with a 429. Read as the next event's answer, the stray 201 would say
    # "delivered" for an event PX refused.
    server = raw_server(["ok_then_stray", "rate_limited"], keep_alive=True)
    recorder, stats = one_then_another(server)
    assert len(recorder.delivered) == 2
    assert (stats.rate_limited, stats.retries, stats.delivered) == (1, 1, 2)
    assert [s.behaviour for s in server.seen] == ["ok_then_stray", "rate_limited", "ok"]
    # The connection with the stray bytes was let go; the 429 and the retry came on
    # another, which our reader then read.
    assert server.seen[1].connection != server.seen[0].connection
    assert server.seen[2].connection == server.seen[1].connection
    assert len(exchanges) == 1


def test_a_connection_the_server_closed_while_idle_costs_no_retry(raw_server: RawServers) -> None:
    server = raw_server(["ok_then_close"], keep_alive=True)
    recorder, stats = one_then_another(server)
    assert len(recorder.delivered) == 2
    assert (stats.retries, stats.delivered, recorder.errors) == (0, 2, [])
    assert server.seen[1].connection != server.seen[0].connection


def test_the_host_is_named_as_urllib3_names_it() -> None:
    from tracker._config import Config  # noqa: PLC0415
    from tracker._transport import RequestsTransport  # noqa: PLC0415

    expected = {
        "https://api.example.com./": b"Host: api.example.com\r\n",
        "https://API.example.com:443": b"Host: api.example.com\r\n",
        "https://api.example.com:8443": b"Host: api.example.com:8443\r\n",
        "http://[::1]:9": b"Host: [::1]:9\r\n",
    }
    for url, host in expected.items():
        config = Config(api_key=API_KEY, product_key="AP-TEST-1", base_url=url)
        transport = RequestsTransport(config, "ua", 1)
        try:
            assert transport._head is not None
            before, after = transport._head
            assert before.endswith(host), (url, before)
            assert API_KEY.encode() in after
        finally:
            transport.close()


# -- the reader, on a socket pair ---------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5.0)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def answer(
    pair: tuple[socket.socket, socket.socket],
    data: bytes,
    *,
    close: bool = False,
    limit: int = 1024,
    timeout: float = 5.0,
) -> tuple[_wire.Head, bytes, bool, bytes]:
    """``data`` as the answer to a request: the head, the body, whether the connection
    may be reused, and the request as the other end read it."""
    ours, theirs = pair
    theirs.sendall(data)
    if close:
        theirs.shutdown(socket.SHUT_WR)
    calls: list[float] = []
    reader, head = _wire.exchange(ours, b"REQUEST", timeout, lambda: calls.append(1))
    assert calls == [1]
    body, reuse = _wire.read_body(reader, head, limit)
    return head, body, reuse, theirs.recv(100)


def test_a_plain_answer_is_read_to_its_length_and_keeps_the_connection(pair: Any) -> None:
    head, body, reuse, request = answer(
        pair, b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nRETRY-after: 7\r\n\r\nhello"
    )
    assert (head.status, head.retry_after, body, reuse, request) == (
        201,
        "7",
        b"hello",
        True,
        b"REQUEST",
    )
    assert not head.malformed


@pytest.mark.parametrize(
    ("data", "reuse", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False, b"ok"),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 2\r\n\r\nok",
            False,
            b"ok",
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, b"ok"),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True, b"ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False, b"ok"),  # bytes past it
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", False, b"ok!"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", True, b"ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", False, b"ok"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", True, b""),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            False,
            b"ok",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", False, b"ok"),  # until the end
        (b"HTTP/1.1 200 OK\r\nConnection:\r\n close\r\nContent-Length: 2\r\n\r\nok", False, b"ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", False, b""),  # cut at its head
        (b"HTTP/1.1 200 OK\n\nok", False, b"ok"),  # bare LF; no length: until the end
    ],
)
def test_whether_the_connection_is_kept(pair: Any, data: bytes, reuse: bool, body: bytes) -> None:
    _, read, kept, _ = answer(pair, data, close=not reuse)
    assert (read, kept) == (body, reuse)


def test_a_chunked_body_with_extensions_and_trailers(pair: Any) -> None:
    head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: gzip, chunked\r\nRetry-After: 2\r\n\r\n"
        b"4;ext=1\r\nwait\r\n6\r\n a bit\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    # gzip listed as a transfer coding is not a content coding: the bytes are as sent.
    assert (head.status, head.retry_after, body, reuse) == (429, "2", b"wait a bit", True)


def test_a_body_past_the_limit_is_cut_and_the_connection_not_kept(pair: Any) -> None:
    _, body, reuse, _ = answer(
        pair, b"HTTP/1.1 500 E\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, limit=100
    )
    assert (len(body), reuse) == (100, False)
    _head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"y" * 4096,
        limit=100,
    )
    assert (len(body), reuse) == (100, False)


def test_interim_answers_are_skipped_up_to_a_bound(pair: Any) -> None:
    head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    )
    assert (head.status, body, reuse) == (201, b"", True)
    with pytest.raises(http.client.HTTPException, match="interim"):
        answer(pair, b"HTTP/1.1 102 Processing\r\n\r\n" * (_wire.MAX_INTERIM + 1))


@pytest.mark.parametrize(
    "first_line",
    [
        b"HELLO there\r\n",
        b"HTTP/1.1 20 OK\r\n",
        b"HTTP/1.1 099 Low\r\n",
        b"HTTP/1.1 2x1 Odd\r\n",
        b"HTTP/1.1\r\n",
    ],
)
def test_a_bad_status_line_is_named(pair: Any, first_line: bytes) -> None:
    with pytest.raises(http.client.BadStatusLine):
        answer(pair, first_line + b"Content-Length: 0\r\n\r\n")


def test_an_answer_in_another_version_of_http_is_refused(pair: Any) -> None:
    with pytest.raises(http.client.UnknownProtocol):
        answer(pair, b"HTTP/2 200\r\ncontent-length: 0\r\n\r\n")


def test_an_answer_sent_before_the_request_was_read_is_still_read(pair: Any) -> None:
    # A server that refuses at once (413, 401) and closes: the write breaks, and the
    # answer is what counts, as through urllib3.
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig")
    theirs.close()
    calls: list[int] = []
    reader, head = _wire.exchange(ours, b"x" * 4_000_000, 5.0, lambda: calls.append(1))
    body, reuse = _wire.read_body(reader, head, 100)
    assert (head.status, body, reuse, calls) == (413, b"big", False, [])


def test_a_connection_closed_before_any_answer(pair: Any) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        answer(pair, b"", close=True)


def test_header_lines_no_parser_takes_are_noted_and_skipped(pair: Any) -> None:
    head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 201 Created\r\nno colon here\r\n folded\r\nBad Name: x\r\n: empty\r\n"
        b"Content-Length: 2\r\n\r\nok",
    )
    # Read, but the connection is not kept: a line we skipped may have framed the answer.
    assert (head.status, head.malformed, body, reuse) == (201, True, b"ok", False)


def test_too_many_or_too_long_header_lines_are_refused(pair: Any) -> None:
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        answer(pair, b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n")
    # Sent by a thread: more than the socket pair's buffer holds.
    ours, theirs = pair
    long_line = b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70000
    threading.Thread(target=theirs.sendall, args=(long_line,), daemon=True).start()
    with pytest.raises(http.client.LineTooLong):
        _wire.exchange(ours, b"REQUEST", 5.0, None)


def test_an_answer_that_drips_ends_at_the_deadline(pair: Any) -> None:
    ours, theirs = pair
    stop = threading.Event()

    def drip() -> None:
        theirs.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n")
        while not stop.wait(0.05):
            theirs.sendall(b" ")

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        reader, head = _wire.exchange(ours, b"REQUEST", 0.5, None)
        assert head.status == 201
        with pytest.raises(socket.timeout):
            _wire.read_body(reader, head, 1024)
    finally:
        stop.set()
    assert 0.45 < time.monotonic() - started < 2.0


def test_a_body_cut_short_is_an_incomplete_read(pair: Any) -> None:
    with pytest.raises(http.client.IncompleteRead):
        answer(pair, b"HTTP/1.1 503 E\r\nContent-Length: 100\r\n\r\n{", close=True)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (b"gzip", gzip.compress),
        (b"deflate", zlib.compress),
        (b"br", lambda data: b"\x00not brotli"),
    ],
)
def test_a_compressed_body_is_read_or_dropped(
    pair: Any, encoding: bytes, encode: Callable[[bytes], bytes]
) -> None:
    data = encode(b'{"message":"quota"}')
    _head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 400 Bad\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (encoding, len(data), data),
    )
    expected: Optional[bytes] = None if encoding == b"br" else b'{"message":"quota"}'
    assert body == (expected or b"")
    assert reuse
