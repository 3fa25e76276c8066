"""A burst onto a real `roadie serve` (bench/load.py's harness, smaller): 10 clips triggered at once over REST.

Real everything: `roadie serve --workers 2` with Prefect's state in PostgreSQL, roadie's in a scratch PostgreSQL
database, `roadie register` per clip, REST triggers, the runs' own slot events. The rate is set to 6 a minute so
that 10 clips overflow its bucket and the check of the starts has something to catch; bench/load.py runs 50."""

from __future__ import annotations

from datetime import UTC

import pytest

from bench.load import bucket_violations, max_overlap, report, run_load


def test_ten_clips_at_once_complete_exactly_once_within_the_limits(pg_server_url):
    result = run_load(10, 8.0, 2, pg_server_url, rate_per_minute=6, concurrency=2, recipe=False)
    summary = report(result)
    assert result.states == {"COMPLETED": 10}, summary
    assert result.statuses == {"ready": 10}, summary
    assert set(result.runs_per_version.values()) == {1}, summary  # exactly once, no duplicate run
    assert result.refused_triggers == 0, summary
    assert result.encodes_seen == 20, summary  # both renditions of every clip, each inside its slot
    assert 1 <= result.max_encodes_at_once <= 2, summary
    assert result.rate_violations == [], summary
    assert result.health_failures == [], summary  # every /health answered, within 1 s


# ---------------------------------------------------------------------- the checks themselves can fail


def t(seconds: float):
    from datetime import datetime, timedelta

    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def test_the_overlap_check_counts_slots_held_at_once():
    events = [
        ("acquired", t(0), "a"),
        ("acquired", t(1), "b"),
        ("acquired", t(2), "c"),
        ("released", t(3), "a"),
        ("released", t(4), "b"),
        ("released", t(5), "c"),
    ]
    assert max_overlap(events) == 3
    # a release at the very instant of the next acquire frees its slot first
    assert (
        max_overlap(
            [("acquired", t(0), "a"), ("released", t(1), "a"), ("acquired", t(1), "b"), ("released", t(2), "b")]
        )
        == 1
    )


@pytest.mark.parametrize(
    "starts, limit, per_minute, violations",
    [
        ([0, 0, 0], 3, 3, 0),  # a full bucket at once
        ([0, 0, 0, 0], 3, 3, 1),  # one more than the bucket
        ([0, 0, 0, 20], 3, 3, 0),  # the fourth after one slot came back (every 20 s)
        ([0, 0, 0, 5], 3, 3, 1),  # the fourth too early
        ([0, 10, 20, 30, 40, 50, 60, 70, 80, 90], 10, 10, 0),
    ],
)
def test_the_bucket_check(starts, limit, per_minute, violations):
    found = bucket_violations([t(s) for s in starts], limit, per_minute / 60)
    assert (len(found) > 0) == (violations > 0), found
