"""Fault injection: the real parts around roadie break while it works, and each case checks the exact end state.

One private stack for the module (tests/fault_support.py): PostgreSQL, SeaweedFS and a Prefect server of its own,
prefect.yaml deployed, two warm process workers. Nothing is mocked: S3 is stopped, database connections are
terminated, PostgreSQL and the Prefect server are restarted, a worker is SIGKILLed and a run is frozen (SIGSTOP).

The cases run in file order on the one stack. The killed worker's run (case 4) is killed early and checked
later, so that the zombie window (heartbeats are 30 s apart, so it cannot be short) passes while case 2 runs."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, date, datetime, timedelta

import psutil
import pytest

from roadie.ops.serve import descendants, kill_tree
from tests.fault_support import INGEST, ZOMBIE_AFTER_S, FaultStack, RowLock, fault_stack, in_thread  # noqa: F401
from tests.support import wait_for

pytestmark = pytest.mark.e2e  # a real Prefect server and workers


def flow_run_process(stack: FaultStack, run_id: str) -> int:
    """The pid of the process running the flow run (the worker reports it as the run's infrastructure pid)."""

    def pid():
        data = stack.client.request("GET", f"/flow_runs/{run_id}").json()
        value = data.get("infrastructure_pid") or ""
        return int(value.rsplit(":", 1)[-1]) if value else None

    return wait_for(pid, 60, f"flow run {run_id} reports no process", poll_s=0.2)


def encoding(run_pid: int) -> int | None:
    """An ffmpeg HLS encode among the run's processes, if one is running."""
    for pid in descendants(run_pid):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            continue
        if "ffmpeg" in cmd and "hls" in cmd:
            return pid
    return None


def tries(stack: FaultStack, run_id: str, name: str) -> int:
    """The most tries a task run of the run named `name` (or `name-<suffix>`, Prefect's default names) took."""
    return max(
        [t.run_count for t in stack.client.task_runs_of([run_id]) if t.name == name or t.name.rsplit("-", 1)[0] == name]
        or [0]
    )


# ---------------------------------------------------------------------- 6. a late result never overwrites a newer one


def test_6_late_result_never_overwrites_a_newer_one(fault_stack, tmp_path):
    """A slow original (frozen with SIGSTOP mid-encode) is overtaken by a second run of the same version, then
    resumes: the version ends in the newer run's state, and the original's late writes are all refused."""
    s = fault_stack
    formats = ["hls_opus"]
    reg = s.register(tmp_path, "raced", 30.0, 44100, 2)
    vid = reg.version_id
    original = s.client.trigger_ingest(vid, formats).flow_run.id
    run_pid = flow_run_process(s, original)
    wait_for(lambda: encoding(run_pid), 120, "the original never encoded", poll_s=0.05)
    os.killpg(run_pid, signal.SIGSTOP)  # its own session: the run and its ffmpeg
    try:
        assert s.version(vid).owner == original
        newer = s.client.create_flow_run(
            INGEST, {"version_id": vid, "formats": formats}, idempotency_key=f"media-ingest:{vid}:again"
        ).flow_run.id
        done = s.wait_run(newer)
        assert done.state_type == "COMPLETED", done.state_message
        v = s.version(vid)
        assert (v.status, v.attempt, v.owner) == ("ready", 2, newer)
        published = s.keys(vid)
    finally:
        os.killpg(run_pid, signal.SIGCONT)
    late = s.wait_run(original)
    # The original's publish was refused, so it failed: without a word on the version, nothing deleted.
    assert late.state_type == "FAILED"
    assert "newer run" in (late.state_message or ""), late.state_message
    v = s.version(vid)
    assert (v.status, v.error, v.attempt, v.owner) == ("ready", None, 2, newer)
    assert s.keys(vid) == published
    s.assert_ready_and_complete(vid, formats)
    # Its dead letter is filed, and the dead-letter flow does not fail a version the newer run owns.
    row = s.wait_failed_job(original)
    assert row.state == "Failed"
    assert s.version(vid).status == "ready"
    s.assert_serving()


# ---------------------------------------------------------------------- 4. a worker SIGKILLed mid-transcode


def test_4_worker_sigkilled_mid_transcode(fault_stack, tmp_path):
    """Kill the worker (and its runs) while the run's ffmpeg encodes. Checked in test_4_..._is_crashed_and_retried,
    once the zombie window has passed."""
    s = fault_stack
    formats = ["hls_opus"]  # one encode: the dead run's leased slot stays taken for a minute (limits.SLOT_LEASE_S)
    reg = s.register(tmp_path, "victim", 45.0, 48000, 2)
    run_id = s.client.trigger_ingest(reg.version_id, formats).flow_run.id
    run_pid = flow_run_process(s, run_id)
    wait_for(lambda: encoding(run_pid), 120, "the run never encoded", poll_s=0.05)
    owner = [w for w in s.workers if w.alive and run_pid in descendants(w.proc.pid)]
    assert len(owner) == 1
    kill_tree(owner[0].proc.pid)  # SIGKILL: the worker, its zygote, the run and its ffmpeg, as when a machine dies
    owner[0].proc.wait()
    assert owner[0].proc.returncode == -signal.SIGKILL
    killed_at = datetime.now(UTC)
    assert s.client.read_flow_run(run_id).state_type == "RUNNING"  # nobody is left to say otherwise
    assert s.version(reg.version_id).status == "processing"
    # The dead run's working folder (with its copy of the original) is left behind: no process can remove it.
    assert [p.name for p in s.tmp.iterdir() if p.name.startswith("roadie-ingest-")]
    s.shared["victim"] = {"run_id": run_id, "version_id": reg.version_id, "formats": formats, "killed_at": killed_at}
    s.start_worker("fault-worker-3")
    s.assert_serving()


# ---------------------------------------------------------------------- 2. database connections killed


def normalized(stack: FaultStack, version_id: str, objects: dict[str, bytes]) -> dict:
    v = stack.version(version_id)
    return {
        "version": (
            v.status,
            v.error,
            v.duration_ms,
            v.sample_rate,
            v.channels,
            v.loudness_lufs,
            v.loudness_range,
            v.true_peak,
            sorted(v.warnings or []),
        ),
        "transcodes": [
            (t.format, t.status, t.segment_count, t.bandwidth, t.duration_ms) for t in stack.transcodes(version_id)
        ],
        "objects": {key: len(body) for key, body in objects.items()},
        "playlists": {key: body for key, body in objects.items() if key.endswith((".m3u8", ".json"))},
    }


def kill_while_blocked(stack: FaultStack, lock: RowLock, what: str) -> list[int]:
    """Wait until one of roadie's connections waits on the test's lock, terminate all of roadie's connections to
    the database (the waiting one mid-statement), then let go of the lock."""
    try:
        wait_for(
            lambda: stack.roadie_backends(waiting_only=True), 60, f"{what}: no roadie connection blocked", poll_s=0.05
        )
        killed = stack.terminate_backends(exclude={lock.pid})
        assert killed
        return killed
    finally:
        lock.release()


def test_2_database_connections_killed_during_ingest_and_rollup(fault_stack, tmp_path):
    s = fault_stack
    formats = ["hls_opus"]
    wav_a = s.register(tmp_path, "calm", 8.0, 44100, 2)
    calm = s.wait_run(s.client.trigger_ingest(wav_a.version_id, formats).flow_run.id)
    assert calm.state_type == "COMPLETED", calm.state_message
    reference = normalized(s, wav_a.version_id, s.assert_ready_and_complete(wav_a.version_id, formats))

    # The same audio again, as a second upload; its connections are killed twice while it works.
    reg = s.register(tmp_path, "calm", 8.0, 44100, 2)
    vid = reg.version_id
    first = RowLock(s, "SELECT 1 FROM track_versions WHERE id = :id FOR UPDATE", id=vid)
    run_id = s.client.trigger_ingest(vid, formats).flow_run.id
    kill_while_blocked(s, first, "start_processing")  # its claim of the version, mid-statement
    wait_for(lambda: s.version(vid).status == "processing", 60, "the run never started processing", poll_s=0.1)
    second = RowLock(s, "SELECT 1 FROM track_versions WHERE id = :id FOR UPDATE", id=vid)
    kill_while_blocked(s, second, "a later write")  # whichever write of the run comes next
    run = s.wait_run(run_id)
    assert run.state_type == "COMPLETED", run.state_message
    assert run.run_count == 1
    assert tries(s, run_id, "start_processing") >= 2  # the killed statement was retried, not skipped
    disturbed = normalized(s, vid, s.assert_ready_and_complete(vid, formats))
    assert disturbed == reference
    assert s.version(vid).attempt == 1

    # The rollup of a day with plays of both tracks: undisturbed, then from scratch with its connection killed.
    day = date(2026, 1, 15)
    tracks = [
        r.track_id
        for r in s.sql(
            "SELECT track_id::text AS track_id FROM track_versions WHERE id IN (:a, :b)", a=wav_a.version_id, b=vid
        )
    ]
    start = datetime(2026, 1, 15, tzinfo=UTC)
    for i in range(40):
        s.sql(
            "INSERT INTO analytics_play (track_id, ip_hash, started_at, watch_ms, completed) "
            "VALUES (:t, :ip, :at, :ms, :done)",
            t=tracks[i % 2],
            ip=f"ip-{i % 7}",
            at=start + timedelta(minutes=35 * i),
            ms=1000 * (i % 50),
            done=i % 3 == 0,
        )
    rollup = "analytics-rollup/analytics-rollup"
    calm_rollup = s.wait_run(s.client.create_flow_run(rollup, {"day": day.isoformat()}).flow_run.id)
    assert calm_rollup.state_type == "COMPLETED", calm_rollup.state_message
    query = (
        "SELECT track_id::text, plays, uniques, completions, likes, reposts, downloads FROM analytics_daily "
        "WHERE day = :day ORDER BY track_id"
    )
    expected = [tuple(r) for r in s.sql(query, day=day)]
    assert len(expected) == 2 and sum(r[1] for r in expected) > 0
    s.sql("DELETE FROM analytics_daily WHERE day = :day", day=day)
    lock = RowLock(s, "LOCK TABLE analytics_daily IN EXCLUSIVE MODE")
    run_id = s.client.create_flow_run(rollup, {"day": day.isoformat()}).flow_run.id
    kill_while_blocked(s, lock, "rollup")
    run = s.wait_run(run_id)
    assert run.state_type == "COMPLETED", run.state_message
    assert tries(s, run_id, f"rollup-{day.isoformat()}") >= 2
    assert [tuple(r) for r in s.sql(query, day=day)] == expected
    s.assert_no_leftovers()
    s.assert_serving()


# ---------------------------------------------------------------------- 4, continued


def test_4_killed_run_is_crashed_filed_failed_and_retried(fault_stack):
    s = fault_stack
    victim = s.shared.get("victim")
    assert victim, "test_4_worker_sigkilled_mid_transcode did not run"
    vid = victim["version_id"]
    run = wait_for(
        lambda: (r := s.client.read_flow_run(victim["run_id"])).state_type == "CRASHED" and r,
        ZOMBIE_AFTER_S + 60,
        "the killed run was never marked Crashed",
        poll_s=1,
    )
    state = s.client.request("GET", f"/flow_runs/{run.id}").json()["state"]
    crashed_after = (datetime.fromisoformat(state["timestamp"]) - victim["killed_at"]).total_seconds()
    # Within the zombie window, plus the automation's evaluation cadence.
    assert crashed_after <= ZOMBIE_AFTER_S + 20, crashed_after
    assert "no heartbeat" in (run.state_message or "")
    row = s.wait_failed_job(run.id)
    assert (row.deployment_name, row.state) == ("media-ingest", "Crashed")
    # Not `processing` forever (the dead-letter flow fails it just after filing the row).
    v = wait_for(lambda: (v := s.version(vid)).status == "failed" and v, 30, "the crashed run's version not failed")
    assert "ended Crashed" in v.error, v
    # The dead run's working folder went with the next run that started on this machine.
    assert not [p for p in s.tmp.iterdir() if p.name.startswith("roadie-ingest-")]

    out = s.retry_failed(run.id)
    retried = s.wait_run(out["flow_run_id"])
    assert retried.state_type == "COMPLETED", retried.state_message
    v = s.version(vid)
    assert (v.attempt, v.owner) == (2, out["flow_run_id"])
    s.assert_ready_and_complete(vid, victim["formats"])  # one row per format, no orphan object, no temp file
    s.assert_serving()
    print(f"killed run marked Crashed {crashed_after:.1f} s after the kill")


# ---------------------------------------------------------------------- 5. the Prefect server restarted


def test_5_prefect_server_restarted_during_an_ingest(fault_stack, tmp_path):
    s = fault_stack
    formats = ["hls_opus", "hls_aac"]
    reg = s.register(tmp_path, "restart", 8.0, 44100, 2)
    vid = reg.version_id
    triggered = s.client.trigger_ingest(vid, formats)
    run_id = triggered.flow_run.id
    wait_for(lambda: s.version(vid).owner == run_id, 60, "the run never claimed the version", poll_s=0.1)
    lock = RowLock(s, "SELECT 1 FROM track_versions WHERE id = :id FOR UPDATE", id=vid)
    try:
        wait_for(lambda: s.roadie_backends(waiting_only=True), 60, "the run never blocked", poll_s=0.05)
        s.restart_prefect(down_s=3)  # the run is mid-task the whole time the server is away
    finally:
        lock.release()
    run = s.wait_run(run_id)
    assert run.state_type == "COMPLETED", run.state_message
    assert run.run_count == 1
    states = [st["type"] for st in s.client.flow_run_states(run_id)]
    assert states.count("RUNNING") == 1 and states[-1] == "COMPLETED", states
    # Exactly one run for the version and its key, before and after the restart.
    assert [r.id for r in s.client.filter_flow_runs({"name": {"any_": [f"ingest-{vid}"]}})] == [run_id]
    again = s.client.trigger_ingest(vid, formats)
    assert not again.created and again.flow_run.id == run_id
    assert s.version(vid).attempt == 1
    s.assert_ready_and_complete(vid, formats)
    s.assert_serving()


# ---------------------------------------------------------------------- 1. S3 down mid-ingest


def block_then(stack: FaultStack, vid: str, run_id: str, action) -> None:
    """Hold the version's row once the run has claimed it; when the run's next write waits on it, do `action`
    (the run is then between fetching the original and publishing anything), and let the run go on."""
    wait_for(lambda: stack.version(vid).owner == run_id, 60, "the run never claimed the version", poll_s=0.05)
    lock = RowLock(stack, "SELECT 1 FROM track_versions WHERE id = :id FOR UPDATE", id=vid)
    try:
        wait_for(lambda: stack.roadie_backends(waiting_only=True), 60, "the run never blocked", poll_s=0.05)
        action()
    finally:
        lock.release()


def test_1_s3_down_mid_ingest(fault_stack, tmp_path):
    s = fault_stack
    formats = ["hls_opus", "hls_aac"]

    # Down for 10 s while the run encodes and uploads: its publishing retries ride it out.
    reg = s.register(tmp_path, "outage", 12.0, 44100, 2)
    vid = reg.version_id
    run_id = s.client.trigger_ingest(vid, formats).flow_run.id
    block_then(s, vid, run_id, s.s3.stop)
    down_at = time.monotonic()
    # Up again 10 s after the first failed publish (the run may first wait for an encode slot).
    wait_for(
        lambda: (
            tries(s, run_id, "publish_rendition") >= 2
            or any(
                t.state_name in ("AwaitingRetry", "Retrying")
                for t in s.client.task_runs_of([run_id])
                if t.name.startswith("publish_")
            )
        ),
        120,
        "no publish met the outage",
        poll_s=0.2,
    )
    time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
    s.s3.start()
    run = s.wait_run(run_id)
    assert run.state_type == "COMPLETED", run.state_message
    assert tries(s, run_id, "publish_rendition") >= 2  # it did meet the outage, and rode it out
    s.assert_ready_and_complete(vid, formats)

    # Down for longer than the retries last: failed, saying why, nothing visible; retried later, complete.
    reg = s.register(tmp_path, "long-outage", 6.0, 44100, 2)
    vid = reg.version_id
    run_id = s.client.trigger_ingest(vid, formats).flow_run.id
    block_then(s, vid, run_id, s.s3.stop)
    try:
        run = s.wait_run(run_id, timeout_s=240)
        assert run.state_type == "FAILED"
        v = s.version(vid)
        assert v.status == "failed" and v.error.startswith("storage unavailable after retries"), v.error
        assert all(t.status == "failed" for t in s.transcodes(vid))
        row = s.wait_failed_job(run_id)
        assert row.state == "Failed" and row.attempts == 4  # the publish: a try and 3 retries
    finally:
        s.s3.start()
    s.assert_nothing_published(vid)
    out = s.retry_failed(run_id)
    retried = s.wait_run(out["flow_run_id"])
    assert retried.state_type == "COMPLETED", retried.state_message
    s.assert_ready_and_complete(vid, formats)
    s.assert_serving()


# ---------------------------------------------------------------------- 3. PostgreSQL restarted mid-distribution


def seed_month(engine, month: date) -> None:
    """The same listeners, artists, contributions and plays, with the same ids, in any database."""
    import uuid

    import sqlalchemy as sa

    def uid(name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"roadie-faults/{name}"))

    users = [f"fan-{i}" for i in range(12)] + [f"band-{i}" for i in range(5)]
    at = datetime.combine(month, datetime.min.time(), tzinfo=UTC)
    with engine.begin() as conn:
        for name in users:
            conn.execute(
                sa.text(
                    "INSERT INTO users (id, username, lossless_enabled, created_at) VALUES (:id, :name, false, :at)"
                ),
                {"id": uid(name), "name": f"f3-{name}", "at": at},
            )
        for b in range(5):
            for t in range(3):
                track, asset, version = (uid(f"{kind}-{b}-{t}") for kind in ("track", "asset", "version"))
                conn.execute(
                    sa.text(
                        "INSERT INTO assets (id, bucket, key, size_bytes, created_at) VALUES (:id, 'b', :key, 1, :at)"
                    ),
                    {"id": asset, "key": f"f3/{asset}", "at": at},
                )
                conn.execute(
                    sa.text("INSERT INTO tracks (id, owner_user_id, title, created_at) VALUES (:id, :owner, 't', :at)"),
                    {"id": track, "owner": uid(f"band-{b}"), "at": at},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO track_versions (id, track_id, original_asset_id, status, warnings, duration_ms, "
                        "attempt, created_at, updated_at) VALUES (:id, :track, :asset, 'ready', '[]', :ms, 0, :at, :at)"
                    ),
                    {"id": version, "track": track, "asset": asset, "ms": 60_000 + 17_000 * t, "at": at},
                )
        for i in range(12):
            for k in range(1 + i % 3):
                conn.execute(
                    sa.text(
                        "INSERT INTO contributions (id, user_id, amount_cents, artist_percent, charity_percent, "
                        "status, created_at) VALUES (:id, :user, :amount, :pct, 0, 'succeeded', :at)"
                    ),
                    {
                        "id": uid(f"contribution-{i}-{k}"),
                        "user": uid(f"fan-{i}"),
                        "amount": 499 + 137 * i + k,
                        "pct": 70 + (i % 4) * 5,
                        "at": at + timedelta(days=k, hours=i),
                    },
                )
            if i == 11:
                continue  # a paying user with no plays: unallocated, not lost
            for p in range(9):
                b, t = (i + p) % 5, (i * p) % 3
                conn.execute(
                    sa.text(
                        "INSERT INTO analytics_play (track_id, user_id, started_at, watch_ms, completed) "
                        "VALUES (:track, :user, :at, :ms, :done)"
                    ),
                    {
                        "track": uid(f"track-{b}-{t}"),
                        "user": uid(f"fan-{i}"),
                        "at": at + timedelta(days=p, hours=i),
                        "ms": 25_000 + 9_000 * ((i + p) % 7),
                        "done": p % 4 == 0,
                    },
                )


def period_snapshot(engine, month: date) -> dict[str, list[tuple]]:
    from sqlalchemy.orm import Session

    from tests.batch_support import period_rows

    with Session(engine) as session:
        rows = period_rows(session, month)
    rows["artist_payouts"] = sorted(r[1:] for r in rows["artist_payouts"])  # ids are the database's own
    return rows


def test_3_postgres_restarted_during_a_distribution(fault_stack):
    import sqlalchemy as sa

    from tasks.payouts.distribution import distribute_month
    from tests.services import scratch_database

    s = fault_stack
    month = date(2026, 2, 1)
    server = sa.make_url(s.db_url).set(database="postgres").render_as_string(hide_password=False)
    with scratch_database(server, "roadie_faults_ref", migrate=True) as ref_url:
        ref = sa.create_engine(ref_url)
        seed_month(ref, month)
        from sqlalchemy.orm import Session

        with Session(ref) as session:
            distribute_month(month, session=session)
            session.commit()
        expected = period_snapshot(ref, month)
        ref.dispose()
    assert expected["allocation"] and expected["unallocated"] and expected["run"]

    seed_month(s.engine(), month)
    observed: list[str] = []
    watching = True

    def watch() -> None:
        """What any reader sees of the period, every 50 ms, in one snapshot: nothing, or all of it."""
        engine = sa.create_engine(s.db_url, poolclass=sa.pool.NullPool)
        query = sa.text(
            "SELECT (SELECT count(*) FROM payout_runs WHERE period_start = :ps), "
            "(SELECT count(*) FROM payout_allocation_lines WHERE period_start = :ps), "
            "(SELECT count(*) FROM artist_payouts WHERE period_start = :ps), "
            "(SELECT coalesce(sum(cents), 0) FROM payout_allocation_lines WHERE period_start = :ps), "
            "(SELECT max(paid_cents) FROM payout_runs WHERE period_start = :ps)"
        )
        while watching:
            try:
                with engine.connect() as conn:
                    runs, lines, payouts, cents, paid = conn.execute(query, {"ps": month}).one()
                if runs == 0:
                    observed.append("none" if lines == payouts == 0 else f"PARTIAL: {lines} lines, no run")
                else:
                    whole = (
                        lines == len(expected["allocation"])
                        and payouts == len(expected["artist_payouts"])
                        and cents == paid
                    )
                    observed.append("whole" if whole else f"PARTIAL: {lines} lines, {payouts} payouts")
            except sa.exc.OperationalError:
                observed.append("down")
            time.sleep(0.05)
        engine.dispose()

    watcher = in_thread(watch)
    lock = RowLock(s, "LOCK TABLE payout_runs IN EXCLUSIVE MODE")  # reads pass; the run's last write waits
    try:
        run_id = s.client.create_flow_run("distribution/distribution", {"month": "2026-02"}).flow_run.id
        blocked = wait_for(
            lambda: s.roadie_backends(waiting_only=True), 120, "the distribution never blocked", poll_s=0.05
        )
        assert "payout_runs" in blocked[0].query  # every line is written, uncommitted, when the server goes
        s.pg.stop(signal.SIGINT)  # fast shutdown: every session is cut, the transaction is lost
        s.pg.start()
    finally:
        lock.release()
    run = s.wait_run(run_id)
    assert run.state_type == "COMPLETED", run.state_message
    assert tries(s, run_id, "distribute-2026-02") >= 2
    assert period_snapshot(s.engine(), month) == expected

    again = s.wait_run(s.client.create_flow_run("distribution/distribution", {"month": "2026-02"}).flow_run.id)
    assert again.state_type == "COMPLETED", again.state_message
    watching = False
    watcher.join(10)
    assert period_snapshot(s.engine(), month) == expected
    assert "down" in observed and "none" in observed and observed[-1] == "whole"
    assert not [o for o in observed if o.startswith("PARTIAL")], observed

    # Last: the stack is still serving ingests after every fault above.
    s.assert_serving()
