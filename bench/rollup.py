"""bench/rollup: the set-based daily rollup against the original design's row loop, on the same plays.

    .venv/bin/python bench/rollup.py [--plays 5000000] [--days 30] [--naive-days 3]

Generates the plays (set-based, generate_series) in PostgreSQL across --days UTC days, then times
  1. roadie's rollup of the whole range, as `roadie rollup --from --to` runs it (one transaction per day,
     2 days at a time): on an empty analytics_daily, as a rerun over unchanged data, and as a rerun after late
     changes to the plays;
  2. the original design's loop: fetch the day's plays, group them in Python, one upsert per track. It is timed
     on the first --naive-days days and extrapolated to the range (labelled as such); its rows are checked
     against the set-based rows of the same days.
Prints plays/s and the ratios.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import sqlalchemy as sa
from _database import bench_database, load, machine, user_rows  # also puts the repo on sys.path
from sqlalchemy.orm import Session

from roadie.db.session import engine_for
from tasks.analytics.rollup import rollup_day
from tasks.batch_sql import day_window

FIRST_DAY = date(2026, 10, 1)


def generate(url: str, plays: int, days: int, tracks: int, users: int) -> None:
    start = f"{FIRST_DAY.isoformat()} 00:00:00+00"
    load(
        url,
        [
            *user_rows(users),
            (
                "INSERT INTO tracks (id, owner_user_id, title, created_at) "
                "SELECT gen_random_uuid(), u.id, 'bench-track-' || g, now() "
                "FROM generate_series(1, :n) g JOIN user_ix u ON u.n = 1 + g % 2000",
                {"n": tracks},
            ),
            ("CREATE TEMP TABLE track_ix AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM tracks", {}),
            # Popular tracks get most plays (random()^2); a fifth of the plays are anonymous (ip hash only). Rows go in
            # in time order, as a live event table fills: a day's plays sit together on disk.
            (
                f"""INSERT INTO analytics_play (track_id, user_id, ip_hash, started_at, watch_ms, completed)
            SELECT t.id, CASE WHEN r.anonymous THEN NULL ELSE u.id END,
                   CASE WHEN r.anonymous OR r.un % 2 = 0 THEN md5((r.un % 500000)::text) END,
                   timestamptz '{start}' + r.second * interval '1 second', r.watch_ms, r.watch_ms > 150000
            FROM (SELECT 1 + floor(:tracks * power(random(), 2))::int AS tn, 1 + floor(random() * :users)::int AS un,
                         random() < 0.2 AS anonymous, random() * 86400 * :days AS second,
                         floor(random() * 300000)::bigint AS watch_ms
                  FROM generate_series(1, :n)) r
            JOIN track_ix t ON t.n = r.tn JOIN user_ix u ON u.n = r.un
            ORDER BY r.second""",
                {"n": plays, "tracks": tracks, "users": users, "days": days},
            ),
            *(
                (
                    f"""INSERT INTO {table} (user_id, track_id, created_at)
             SELECT u.id, t.id, timestamptz '{start}' + r.second * interval '1 second'
             FROM (SELECT 1 + floor(:tracks * power(random(), 2))::int AS tn, 1 + floor(random() * :users)::int AS un,
                          random() * 86400 * :days AS second FROM generate_series(1, :n)) r
             JOIN track_ix t ON t.n = r.tn JOIN user_ix u ON u.n = r.un
             ORDER BY r.second""",
                    {"n": plays // share, "tracks": tracks, "users": users, "days": days},
                )
                for table, share in (("likes", 10), ("reposts", 50), ("downloads", 50))
            ),
        ],
    )


def set_based(url: str, days: list[date]) -> tuple[float, int]:
    engine = engine_for(url)

    def one(day: date):
        with Session(engine) as session:
            return rollup_day(day, session=session)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:  # as the CLI and the flow: 2 day transactions at a time
        results = list(pool.map(one, days))
    return time.perf_counter() - started, sum(r.plays for r in results)


def naive_day(conn: sa.Connection, day: date) -> int:
    """The original design: every play of the day into the process, grouped in a dict, one upsert per track
    (with its window bug fixed and the listener rule applied, so the rows can be compared)."""
    lo, hi = day_window(day)
    window = {"lo": lo, "hi": hi}
    stats: dict = defaultdict(
        lambda: {"plays": 0, "listeners": set(), "completions": 0, "likes": 0, "reposts": 0, "downloads": 0}
    )
    plays = conn.execute(
        sa.text(
            "SELECT track_id, user_id, ip_hash, completed FROM analytics_play "
            "WHERE started_at >= :lo AND started_at < :hi"
        ),
        window,
    ).all()
    for track_id, user_id, ip_hash, completed in plays:
        s = stats[track_id]
        s["plays"] += 1
        s["completions"] += bool(completed)
        if user_id is not None:
            s["listeners"].add(("u", user_id))
        elif ip_hash is not None:
            s["listeners"].add(("ip", ip_hash))
    for table in ("likes", "reposts", "downloads"):
        for (track_id,) in conn.execute(
            sa.text(f"SELECT track_id FROM {table} WHERE created_at >= :lo AND created_at < :hi"), window
        ):
            stats[track_id][table] += 1
    conn.execute(sa.text("DELETE FROM analytics_daily WHERE day = :day"), {"day": day})
    upsert = sa.text("""INSERT INTO analytics_daily (track_id, day, plays, uniques, completions, likes, reposts,
                                                     downloads)
                        VALUES (:track_id, :day, :plays, :uniques, :completions, :likes, :reposts, :downloads)
                        ON CONFLICT (track_id, day) DO UPDATE SET plays = excluded.plays,
                            uniques = excluded.uniques, completions = excluded.completions,
                            likes = excluded.likes, reposts = excluded.reposts, downloads = excluded.downloads""")
    for track_id, s in stats.items():
        conn.execute(
            upsert,
            {
                "track_id": track_id,
                "day": day,
                "plays": s["plays"],
                "uniques": len(s["listeners"]),
                "completions": s["completions"],
                "likes": s["likes"],
                "reposts": s["reposts"],
                "downloads": s["downloads"],
            },
        )
    conn.commit()
    return len(plays)


def snapshot(url: str, days: list[date]) -> list[tuple]:
    with engine_for(url).connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT track_id, day, plays, uniques, completions, likes, reposts, downloads FROM analytics_daily "
                "WHERE day >= :lo AND day <= :hi ORDER BY day, track_id"
            ),
            {"lo": days[0], "hi": days[-1]},
        ).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tracks", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--naive-days", type=int, default=3)
    args = parser.parse_args()
    days = [FIRST_DAY + timedelta(days=i) for i in range(args.days)]
    naive_days = days[: args.naive_days]

    with bench_database("rollup") as url:
        print(f"machine: {machine(url)}")
        started = time.perf_counter()
        generate(url, args.plays, args.days, args.tracks, args.users)
        print(
            f"generated {args.plays:,} plays over {args.days} days, {args.tracks:,} tracks, {args.users:,} users, "
            f"+{args.plays // 10 + 2 * (args.plays // 50):,} likes/reposts/downloads in "
            f"{time.perf_counter() - started:.1f} s"
        )

        first_s, total_plays = set_based(url, days)
        rerun_s, rerun_plays = set_based(url, days)
        assert rerun_plays == total_plays
        # Late data: a tenth of a percent of the plays withdrawn (bots found), spread over every day.
        with engine_for(url).begin() as conn:
            withdrawn = conn.execute(sa.text("DELETE FROM analytics_play WHERE id % 1000 = 7")).rowcount
        late_s, late_plays = set_based(url, days)
        set_rows = snapshot(url, naive_days)

        with engine_for(url).connect() as conn:
            naive_s, naive_plays = 0.0, 0
            for day in naive_days:
                t0 = time.perf_counter()
                naive_plays += naive_day(conn, day)
                naive_s += time.perf_counter() - t0
        same = snapshot(url, naive_days) == set_rows

        naive_rate = naive_plays / naive_s
        naive_range_s = naive_s * args.days / len(naive_days)
        print()
        print(f"{'':<52}{'seconds':>9}{'plays/s':>13}{'naive/this':>12}")
        for label, seconds, n in (
            ("set-based, whole range, first run (empty table)", first_s, total_plays),
            ("set-based, whole range, rerun (nothing changed)", rerun_s, total_plays),
            (f"set-based, whole range, rerun ({withdrawn:,} plays withdrawn)", late_s, late_plays),
        ):
            print(f"{label:<52}{seconds:>9.2f}{n / seconds:>13,.0f}{naive_range_s / seconds:>11.1f}x")
        print(f"{f'naive row loop, measured on {len(naive_days)} days':<52}{naive_s:>9.2f}{naive_rate:>13,.0f}")
        print(f"{f'naive row loop, extrapolated to {args.days} days':<52}{naive_range_s:>9.2f}{naive_rate:>13,.0f}")
        print()
        print(
            f"naive/this = the naive loop's time for the range (extrapolated from {len(naive_days)} measured days, "
            "same plays/s) over the set-based time."
        )
        print(f"analytics_daily rows of the measured days identical to the naive loop's: {same}")


if __name__ == "__main__":
    main()
