"""One POST per event over a keep-alive requests pool, and what PX's answer means."""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from email.utils import parsedate_to_datetime
from typing import Any, Optional
from urllib.parse import urlsplit

import attrs
import requests
import urllib3
from requests.adapters import HTTPAdapter

from tracker._config import Config, is_loopback
from tracker._event import CustomEvent

logger = logging.getLogger("tracker")

MAX_BODY = 64 * 1024  # read no more of any answer; PX's are a few hundred bytes
MAX_MESSAGE = 300


class Kind(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # 408, 5xx but 501/505, connection errors, timeouts
    RATE_LIMITED = "rate_limited"  # 429: pause every sender, then retry
    UNAUTHORIZED = "unauthorized"  # 401, 403: permanent
    REJECTED = "rejected"  # every other answer: permanent


@attrs.frozen
class Result:
    kind: Kind
    status_code: Optional[int] = None
    message: Optional[str] = None
    retry_after: Optional[float] = None  # seconds, from a 429's Retry-After, uncapped


def classify(status: int) -> Kind:
    if 200 <= status < 300:
        return Kind.DELIVERED
    if status == 429:
        return Kind.RATE_LIMITED
    if status == 408 or (500 <= status < 600 and status not in (501, 505)):
        return Kind.RETRY
    if status in (401, 403):
        return Kind.UNAUTHORIZED
    return Kind.REJECTED


def parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None
    when absent or unreadable. ``now`` is the wall-clock time, for dates."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # Python 3.9 returns None for some unparseable dates
        return None
    return max(0.0, when.timestamp() - now)


_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def server_message(body: bytes, secret: str) -> Optional[str]:
    """A short, single-line explanation from an error body in any of PX's shapes."""
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    message: Optional[str] = None
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("externalapierror")
        if isinstance(error, dict):
            parts = [str(error.get("message") or error.get("status") or "")]
            for sub in error.get("subErrors") or ():
                if isinstance(sub, dict) and sub.get("message"):
                    parts.append(str(sub["message"]))
            message = "; ".join(p for p in parts if p)
        else:
            for key in ("message", "error", "detail"):
                if isinstance(data.get(key), str):
                    message = data[key]
                    break
    if message is None:
        message = _TAGS.sub(" ", text) if "<" in text else text
    message = _SPACE.sub(" ", message).strip()
    if secret:
        message = message.replace(secret, "***")
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return message or None


def _describe(exc: BaseException) -> str:
    # Exception texts from requests/urllib3 name the URL, never headers; keep them short.
    text = _SPACE.sub(" ", str(exc)).strip()
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Transport:
    """Sends one event per request; thread-safe; owns its own Session (one per process)."""

    def __init__(self, config: Config, user_agent: str, pool_size: int) -> None:
        endpoint = config.endpoint
        self._secret = config.api_key
        self._clock = config.clock
        session = requests.Session()
        session.headers.update(
            {
                "X-APTRINSIC-API-KEY": config.api_key,
                "Content-Type": "application/json",
                "User-Agent": user_agent,
            }
        )
        # Retries are ours (with backoff and pacing), never urllib3's hidden ones.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        # What requests would look up in the environment on every request (proxies and
        # NO_PROXY, REQUESTS_CA_BUNDLE), looked up once; never for a loopback test server.
        if is_loopback(urlsplit(endpoint).hostname or ""):
            settings: dict[str, Any] = {"proxies": {}, "verify": True, "cert": None}
        else:
            settings = dict(session.merge_environment_settings(endpoint, {}, True, None, None))
        # Off from here on: that also keeps ~/.netrc credentials out of PX's requests.
        session.trust_env = False
        self._options: dict[str, Any] = {
            "timeout": (config.timeout, config.timeout),
            "allow_redirects": False,
            "stream": True,
            "proxies": settings["proxies"],
            "verify": settings["verify"],
            "cert": settings["cert"],
        }
        # Every request is a copy of this one with its own body: preparing a request
        # (merging headers, cookies, hooks) per event cost a third of the client's CPU.
        self._template = session.prepare_request(requests.Request("POST", endpoint, data=b"{}"))
        self._session = session

    def send(self, event: CustomEvent) -> Result:
        body = json.dumps(
            event.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
        request = self._template.copy()
        request.body = body
        request.headers["Content-Length"] = str(len(body))
        try:
            with self._session.send(request, **self._options) as response:
                status = response.status_code
                retry_after = response.headers.get("Retry-After")
                try:
                    answer = response.raw.read(MAX_BODY, decode_content=True) or b""
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    # The status came, the body broke off (read timeout, closed, bad
                    # encoding): a 2xx is PX's word; anything else is retried like a
                    # connection error.
                    if 200 <= status < 300:
                        return Result(Kind.DELIVERED, status)
                    return Result(Kind.RETRY, status, _describe(exc))
        except requests.RequestException as exc:
            # Connection refused/reset/closed, timeouts, broken chunked bodies: the
            # outcome is unknown or nothing was sent, so the request may be retried.
            return Result(Kind.RETRY, None, _describe(exc))
        kind = classify(status)
        if kind is Kind.DELIVERED:
            return Result(kind, status)
        message = server_message(answer, self._secret)
        if kind is Kind.RATE_LIMITED:
            return Result(kind, status, message, parse_retry_after(retry_after, self._clock.time()))
        return Result(kind, status, message)

    def close(self) -> None:
        self._session.close()
