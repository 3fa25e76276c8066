"""What callers name a version and its renditions by, checked: a version id (a UUID) and the output formats."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from roadie.errors import InvalidInput
from roadie.settings import FORMATS, get_settings


def parse_formats(formats: Iterable[str] | str | None) -> tuple[str, ...]:
    if formats is None:
        return tuple(get_settings().default_formats)
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    cleaned = tuple(dict.fromkeys(f.strip() for f in items if f and f.strip()))
    unknown = [f for f in cleaned if f not in FORMATS]
    if unknown:
        raise InvalidInput(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if not cleaned:
        raise InvalidInput("no output format asked for")
    return cleaned


def parse_uuid(value: str, what: str = "version id") -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None
