"""The distribution's period: one calendar month in UTC, and the binds every statement of it takes."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from roadie.errors import InvalidInput
from tasks.batch_sql import DAY, TIMESTAMP, UTC, utc_midnight

_ISO_MONTH = re.compile(r"\d{4}-\d{2}")


@dataclass(frozen=True)
class Period:
    start: date  # the month's first day
    end: date  # the month's last day, inclusive (artist_payouts.period_end)

    @property
    def label(self) -> str:
        return self.start.strftime("%Y-%m")

    @property
    def window(self) -> tuple[datetime, datetime]:
        """Half-open UTC window [first day 00:00, next month's first day 00:00)."""
        return utc_midnight(self.start), utc_midnight(self.end + timedelta(days=1))

    @property
    def lock_id(self) -> int:
        return self.start.year * 12 + self.start.month - 1

    @classmethod
    def of(cls, month: Period | date | str) -> Period:
        if isinstance(month, Period):
            return month
        first = parse_month(month) if isinstance(month, str) else month.replace(day=1)
        return cls(first, first.replace(day=calendar.monthrange(first.year, first.month)[1]))


def parse_month(text: str) -> date:
    """A strict YYYY-MM, as the first day of that month."""
    if not isinstance(text, str) or not _ISO_MONTH.fullmatch(text.strip()):
        raise InvalidInput(f"month must be YYYY-MM, got {text!r}")
    year, month = (int(part) for part in text.strip().split("-"))
    if not 1 <= month <= 12 or not 1 <= year <= 9998:
        raise InvalidInput(f"month {text!r} does not exist or is out of range")
    return date(year, month, 1)


def last_month(now: datetime | None = None) -> Period:
    first_of_this = (now or datetime.now(UTC)).astimezone(UTC).date().replace(day=1)
    return Period.of(first_of_this - timedelta(days=1))


# Every statement takes :ps (period start, a date) and the window :lo/:hi; money is BIGINT throughout (the CASTs
# keep PostgreSQL's SUM(bigint) -> numeric from turning integer division into exact division).

PERIOD_BINDS: dict[str, sa.types.TypeEngine[Any]] = {
    "ps": DAY,
    "pe": DAY,
    "lo": TIMESTAMP,
    "hi": TIMESTAMP,
    "now": TIMESTAMP,
}


SUCCEEDED = "status = 'succeeded' AND created_at >= :lo AND created_at < :hi"


def bind_params(period: Period) -> dict[str, Any]:
    lo, hi = period.window
    return {"ps": period.start, "pe": period.end, "lo": lo, "hi": hi}
