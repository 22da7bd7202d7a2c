"""TLS on loopback with a private CA: the ca_bundle option, PX_CA_BUNDLE and requests'
REQUESTS_CA_BUNDLE are honoured for https://127.0.0.1 too, and verification stays on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from ._rawserver import PrivateCA, RawServer, make_private_ca
from ._support import Recorder, recorded_tracker

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return make_private_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_server(raw_server: Callable[..., RawServer], ca: PrivateCA) -> RawServer:
    server = raw_server([], default="ok", tls=ca.server_context())
    assert server.url.startswith("https://127.0.0.1:")
    return server


def deliver(server: RawServer, **options: Any) -> Recorder:
    """Track one event against ``server``; what came of it."""
    recorder = Recorder()
    with recorded_tracker(server.url, recorder, **options) as t:
        t.track("u", "over-tls")
        assert t.flush(timeout=10)
    return recorder


class TestPrivateCA:
    def test_the_ca_bundle_option_verifies_a_private_ca_on_loopback(
        self, tls_server: RawServer, ca: PrivateCA
    ) -> None:
        recorder = deliver(tls_server, ca_bundle=str(ca.ca_file))
        assert recorder.errors == []
        assert len(recorder.delivered) == 1
        assert tls_server.behaviours() == ["ok"]

    @pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "PX_CA_BUNDLE"])
    def test_a_ca_bundle_from_the_environment_is_honoured_on_loopback(
        self,
        tls_server: RawServer,
        ca: PrivateCA,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
    ) -> None:
        # issue 9 item 10: REQUESTS_CA_BUNDLE was ignored for a loopback base URL.
        monkeypatch.setenv(variable, str(ca.ca_file))
        recorder = deliver(tls_server)
        assert recorder.errors == []
        assert len(recorder.delivered) == 1

    def test_a_directory_of_cas_works_as_ca_bundle(
        self, tls_server: RawServer, ca: PrivateCA, tmp_path: Path
    ) -> None:
        # A directory must be in OpenSSL's hashed form (c_rehash): <hash>.0 files.
        digest = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(ca.ca_file)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        shutil.copy(ca.ca_file, tmp_path / f"{digest}.0")
        recorder = deliver(tls_server, ca_bundle=str(tmp_path))
        assert recorder.errors == []
        assert len(recorder.delivered) == 1

    def test_without_the_ca_verification_fails_at_once_naming_ca_bundle(
        self, tls_server: RawServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        recorder = deliver(tls_server, max_retries=3)
        (error,) = recorder.errors
        assert (error.reason, error.attempts) == ("rejected", 1)  # configuration: no retries
        assert error.message is not None
        assert "ca_bundle" in error.message
        assert recorder.delivered == []
        assert tls_server.seen == []  # the handshake failed: no request was ever read
