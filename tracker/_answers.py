"""What one attempt came to (``Result``), and the texts made from what a server sent:
every one redacted, on one line, short. Used by the transports, over requests or in
memory."""

from __future__ import annotations

import json
import re
import ssl
from typing import Any, Optional

import attrs

from tracker._event import CustomEvent
from tracker._retry import Kind, classify, parse_retry_after

MAX_MESSAGE = 300


@attrs.frozen
class Result:
    """What one attempt came to; ``message`` is redacted and short."""

    kind: Kind
    status_code: Optional[int] = None
    message: Optional[str] = None
    retry_after: Optional[float] = None  # seconds, from a 429's Retry-After, uncapped


def encode(event: CustomEvent) -> bytes:
    """The request body: compact JSON, UTF-8 (track() proved that it encodes)."""
    return json.dumps(
        event.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


_SPACE = re.compile(r"\s+")
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def _written_forms(secret: str) -> tuple[str, ...]:
    """``secret`` as it may appear in a text: as it is, and as ``repr()`` writes it inside
    an exception's message (``BadStatusLine('<the line>')``): backslashes doubled, a
    quote escaped. Longest first, so no shorter form leaves part of a longer one."""
    escaped = secret.replace("\\", "\\\\")
    forms = {secret, escaped, escaped.replace("'", "\\'"), escaped.replace('"', '\\"')}
    return tuple(sorted(forms, key=len, reverse=True))


def redact(text: str, secret: str) -> str:
    """``text`` on one line, without ``secret``, at most MAX_MESSAGE characters. Every
    text that may carry a server's bytes (answers, exception messages) goes through here
    before it is stored, logged or raised: a server may echo the key."""
    forms = _written_forms(secret) if secret else ()
    for form in forms:
        text = text.replace(form, "***")
    text = _SPACE.sub(" ", text).strip()
    for form in forms:
        # Collapsing whitespace can join a key split across lines.
        text = text.replace(form, "***")
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return text


def server_message(body: bytes, secret: str) -> Optional[str]:
    """A short, single-line explanation from an error body in any of PX's shapes."""
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    message: Optional[str] = None
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        error = data.get("externalapierror")
        if isinstance(error, dict):
            parts = [str(error.get("message") or error.get("status") or "")]
            subs = error.get("subErrors")
            for sub in subs if isinstance(subs, list) else ():
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
    return redact(message, secret) or None


def interpret(
    status: int, retry_after: Optional[str], body: bytes, secret: str, now: float
) -> Result:
    """A complete answer as a Result: its status classified, a refusal's message
    redacted, a 429's Retry-After read (``now``: the wall-clock time, for dates)."""
    kind = classify(status)
    if kind is Kind.DELIVERED:
        return Result(kind, status)
    message = server_message(body, secret)
    if kind is Kind.RATE_LIMITED:
        return Result(kind, status, message, parse_retry_after(retry_after, now))
    return Result(kind, status, message)


def describe(exc: BaseException, secret: str) -> str:
    """An exception as a short redacted line: its type, and its text."""
    text = redact(str(exc), secret)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_certificate_error(exc: BaseException) -> bool:
    """Whether a verification failure is somewhere in the chain requests and urllib3
    wrapped around it."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending += current.args
    return False
