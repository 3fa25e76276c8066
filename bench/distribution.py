"""bench/distribution: one month of the user-centric distribution at platform scale, in PostgreSQL.

    .venv/bin/python bench/distribution.py [--users 100000] [--artists 10000] [--plays 5000000]

Generates (set-based, generate_series) --users users of whom the first --artists own 5 tracks each (one ready
version with a duration, a tenth without), 1-2 contributions per user (a twentieth refunded or failed, most with
a charity share), and --plays plays in the month: each user draws 80 % of their plays from a taste of their own
(100 neighbouring tracks = 20 artists, skewed) and 20 % from the whole catalogue (popularity random()^2); a
tenth of the plays are anonymous, listening times are 0-7 min (some under 30 s), and one user in 20 pays but
plays nothing. Then times distribute_month() as `roadie distribute` runs it: the first computation, a rerun
over unchanged data, and a rerun after 1 % of the contributions were refunded. Prints seconds and plays/s;
the target is <= 30 s.
"""

from __future__ import annotations

import argparse
import time

import sqlalchemy as sa
from _database import bench_database, load, machine, user_rows  # also puts the repo on sys.path
from sqlalchemy.orm import Session

from roadie.db.session import engine_for
from tasks.payouts.distribution import distribute_month
from tasks.payouts.period import Period

PERIOD = Period.of("2026-10")
TRACKS_PER_ARTIST = 5


def generate(url: str, users: int, artists: int, plays: int) -> None:
    start = f"{PERIOD.start.isoformat()} 00:00:00+00"
    seconds = (PERIOD.end - PERIOD.start).days * 86400 + 86400
    tracks = artists * TRACKS_PER_ARTIST
    load(
        url,
        [
            *user_rows(users),
            (
                "INSERT INTO charities (id, name, created_at) "
                "SELECT gen_random_uuid(), 'bench-charity-' || g, now() FROM generate_series(1, 10) g",
                {},
            ),
            ("CREATE TEMP TABLE charity_ix AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM charities", {}),
            (
                "INSERT INTO tracks (id, owner_user_id, title, created_at) "
                "SELECT gen_random_uuid(), u.id, 'bench-track-' || g, now() "
                "FROM generate_series(1, :n) g JOIN user_ix u ON u.n = 1 + g % :artists",
                {"n": tracks, "artists": artists},
            ),
            (
                "CREATE TEMP TABLE track_ix AS SELECT row_number() OVER (ORDER BY owner_user_id, id) AS n, id FROM tracks",
                {},
            ),  # an artist's tracks are neighbours: a taste of 100 tracks is 20 artists
            (
                "INSERT INTO assets (id, bucket, key, size_bytes, created_at) "
                "SELECT gen_random_uuid(), 'roadie', 'originals/' || t.id, 1000000, now() FROM tracks t",
                {},
            ),
            (
                "INSERT INTO track_versions (id, track_id, original_asset_id, status, warnings, duration_ms, created_at, "
                "updated_at) SELECT gen_random_uuid(), t.id, a.id, 'ready', '[]', "
                "CASE WHEN random() < 0.1 THEN NULL ELSE 60000 + floor(random() * 360000)::bigint END, now(), now() "
                "FROM tracks t JOIN assets a ON a.key = 'originals/' || t.id",
                {},
            ),
            (
                f"""INSERT INTO contributions (id, user_id, amount_cents, artist_percent, charity_percent, charity_id, status,
                                        created_at)
            SELECT gen_random_uuid(), u.id, 100 + floor(random() * 4900)::bigint, 70 + floor(random() * 21)::int,
                   CASE WHEN c.id IS NULL THEN 0 ELSE 1 + floor(random() * 10)::int END, c.id,
                   CASE WHEN random() < 0.95 THEN 'succeeded' WHEN random() < 0.5 THEN 'refunded' ELSE 'failed' END,
                   timestamptz '{start}' + random() * :seconds * interval '1 second'
            FROM user_ix u
            CROSS JOIN LATERAL generate_series(1, 1 + (u.n % 2)) g
            LEFT JOIN charity_ix c ON c.n = 1 + (u.n + g) % 14""",
                {"seconds": seconds},
            ),
            (
                f"""INSERT INTO analytics_play (track_id, user_id, ip_hash, started_at, watch_ms, completed)
            SELECT t.id, CASE WHEN r.anonymous THEN NULL ELSE u.id END,
                   CASE WHEN r.anonymous THEN md5(r.un::text) END,
                   timestamptz '{start}' + r.second * interval '1 second', r.watch_ms, r.watch_ms > 200000
            FROM (SELECT CASE WHEN random() < 0.2 THEN 1 + floor(:tracks * power(random(), 2))::int
                              ELSE 1 + (p.un * 7919 + floor(100 * power(random(), 2))::int) % :tracks END AS tn,
                         p.un, random() < 0.1 AS anonymous, random() * :seconds AS second,
                         floor(random() * 420000)::bigint AS watch_ms
                  FROM (SELECT CASE WHEN un % 20 = 0 THEN un - 1 ELSE un END AS un
                        FROM (SELECT 1 + floor(random() * :users)::int AS un FROM generate_series(1, :n)) d) p) r
            JOIN track_ix t ON t.n = r.tn JOIN user_ix u ON u.n = r.un
            ORDER BY r.second""",
                {"n": plays, "tracks": tracks, "users": users, "seconds": seconds},
            ),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--artists", type=int, default=10_000)
    parser.add_argument("--plays", type=int, default=5_000_000)
    args = parser.parse_args()

    with bench_database("distribution") as url:
        print(f"machine: {machine(url)}")
        started = time.perf_counter()
        generate(url, args.users, args.artists, args.plays)
        engine = engine_for(url)
        with engine.connect() as conn:
            contributions = conn.execute(sa.text("SELECT COUNT(*) FROM contributions")).scalar_one()
        print(
            f"generated {args.users:,} users, {args.artists:,} artists with {args.artists * TRACKS_PER_ARTIST:,} "
            f"tracks, {contributions:,} contributions, {args.plays:,} plays in {PERIOD.label} in "
            f"{time.perf_counter() - started:.1f} s"
        )

        runs = []
        for label in ("first computation", "rerun, nothing changed", "rerun after refunds"):
            if label == "rerun after refunds":  # one contribution in a hundred refunded: those users' lines change
                with engine.begin() as conn:
                    refunded = conn.execute(
                        sa.text(
                            "UPDATE contributions SET status = 'refunded' WHERE status = 'succeeded' "
                            "AND ('x' || substr(md5(id::text), 1, 8))::bit(32)::int % 100 = 0"
                        )
                    ).rowcount
                label = f"rerun, {refunded:,} refunds"
            with Session(engine) as session:
                t0 = time.perf_counter()
                result = distribute_month(PERIOD, session=session)
                runs.append((label, time.perf_counter() - t0, result))
            if len(runs) == 1:
                with engine.connect() as conn:
                    lines = conn.execute(sa.text("SELECT COUNT(*) FROM payout_allocation_lines")).scalar_one()

        result = runs[0][2]
        print(
            f"result: pools {result.pool_cents:,} c = paid {result.paid_cents:,} c + unallocated "
            f"{result.unallocated_cents:,} c; charity {result.charity_cents:,} c; "
            f"platform {result.platform_cents:,} c; {result.artists:,} artists, {result.listeners:,} listeners, "
            f"{lines:,} allocation lines"
        )
        print("invariants: " + ", ".join(f"{c.name}: {'ok' if c.ok else 'FAILED'}" for c in result.checks))
        print()
        print(f"{'':<26}{'seconds':>9}{'plays/s':>13}   target <= 30 s")
        for label, seconds, _ in runs:
            print(f"{label:<26}{seconds:>9.2f}{args.plays / seconds:>13,.0f}   {'ok' if seconds <= 30 else 'MISSED'}")
        assert runs[0][2].as_json() | {"seconds": 0} == runs[1][2].as_json() | {"seconds": 0}
        after = runs[2][2]
        print(
            f"after the refunds: pools {after.pool_cents:,} c = paid {after.paid_cents:,} c + unallocated "
            f"{after.unallocated_cents:,} c, invariants {'ok' if all(c.ok for c in after.checks) else 'FAILED'}"
        )


if __name__ == "__main__":
    main()
