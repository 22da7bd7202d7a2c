"""Hostile values for track(): subclasses and containers whose own methods lie or raise."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, NoReturn, Optional


class Called(Exception):
    """Raised by a hostile method: validation must neither need nor show its result."""


def _boom(*_: object, **__: object) -> NoReturn:
    raise Called


class SelfStr(str):
    """``str()`` and ``repr()`` of it give itself back: recursing on them never ends."""

    def __str__(self) -> str:
        return self

    def __repr__(self) -> str:
        return self


class LyingStr(str):
    """Claims ASCII, non-blank, one character long, equal to anything, hashed like "USER",
    and stringifies to "fine": only its actual characters may count."""

    def isascii(self) -> bool:
        return True

    def isspace(self) -> bool:
        return False

    def __len__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("USER")

    def __str__(self) -> str:
        return "fine"

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"fine"

    def __getitem__(self, index: Any) -> str:
        raise Called


class BigInt(int):
    """An int subclass, so a check on ``type(value) is int`` does not see it."""


class EmptyStrInt(int):
    def __str__(self) -> str:
        return ""

    __repr__ = __str__


class SurrogateInt(int):
    def __str__(self) -> str:
        return "\ud800"

    __repr__ = __str__


class RaisingInt(int):
    __str__ = __repr__ = __format__ = __index__ = __int__ = _boom


class WeirdFloat(float):
    """Its repr says NaN and converting it raises: its actual value is what counts."""

    __float__ = _boom

    def __repr__(self) -> str:
        return "nan"


class LyingNanFloat(float):
    def __repr__(self) -> str:
        return "1.0"


class WeirdDecimal(Decimal):
    """Claims to be finite; converting, printing or comparing it raises."""

    def is_finite(self) -> bool:
        return True

    __float__ = __repr__ = __str__ = __eq__ = _boom
    __hash__ = Decimal.__hash__


class Opaque:
    """Neither ``repr()`` nor ``str()`` works: an error message must not need them."""

    __repr__ = __str__ = __format__ = _boom


class RaisingTz(tzinfo):
    utcoffset = dst = tzname = _boom


class WildTz(tzinfo):
    """An offset Python refuses (more than a day)."""

    def utcoffset(self, _: object) -> timedelta:
        return timedelta(hours=30)

    def dst(self, _: object) -> Optional[timedelta]:
        return None


class LyingDict(dict):  # type: ignore[type-arg]
    """A dict that reports one item whatever it holds."""

    def __len__(self) -> int:
        return 1


class LyingList(list):  # type: ignore[type-arg]
    """Iterates as empty and reports no items; what it holds is what JSON sends."""

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0


class Pairs(Mapping):  # type: ignore[type-arg]
    """A Mapping that yields ``pairs`` from items() (anything, pairs or not) and reports
    ``size`` items."""

    def __init__(self, pairs: list[Any], size: int) -> None:
        self._pairs = pairs
        self._size = size

    def items(self) -> Any:
        return iter(self._pairs)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Any]:
        raise Called

    def __getitem__(self, key: object) -> Any:
        raise Called


class Endless(Mapping):  # type: ignore[type-arg]
    """items() never ends; len() says two."""

    def items(self) -> Any:
        n = 0
        while True:
            n += 1
            yield f"k{n}", n

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[Any]:
        raise Called

    def __getitem__(self, key: object) -> Any:
        raise Called


class RaisingMapping(Mapping):  # type: ignore[type-arg]
    items = __len__ = __iter__ = __getitem__ = _boom


class ShownEnum(enum.Enum):
    """An Enum whose repr does not follow its value (Enum's own would recurse forever):
    hypothesis and pytest show these; the validation never may."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}>"


class SelfEnum(ShownEnum):
    A = 1


SelfEnum.A._value_ = SelfEnum.A  # its value is itself


class Ping(ShownEnum):
    A = 1


class Pong(ShownEnum):
    B = 2


Ping.A._value_ = Pong.B  # values that cycle: Ping.A -> Pong.B -> Ping.A
Pong.B._value_ = Ping.A


class Hidden(enum.Enum):
    NAME = SelfStr("hidden")


class SneakyDatetime(datetime):
    """Every method a conversion might call on it raises: the instant it holds counts."""

    __sub__ = __rsub__ = astimezone = isoformat = utcoffset = timestamp = _boom
    __repr__ = __str__ = __format__ = _boom


PLAIN = (str, int, float, bool, type(None))


def assert_plain(value: Any) -> None:
    """Only built-in values, never a subclass, in what was queued."""
    if type(value) is dict:
        for key, item in value.items():
            assert type(key) is str
            assert_plain(item)
    elif type(value) is list:
        for item in value:
            assert_plain(item)
    else:
        assert type(value) in PLAIN, type(value)
