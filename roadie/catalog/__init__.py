"""The catalogue: every change of a track version's state (processing, ready, failed, warnings, media info,
transcodes; analysis results, fingerprints and duplicate reports in `results`) is one function here, behind the
late-result guard. Registering an upload (its `pending` rows) is `registration`'s; reading a version's state is
`views`'. Core: it imports roadie's core modules only, never tasks, flows or the entry points."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Update, or_, select, update
from sqlalchemy.orm import Session

from roadie.catalog.assets import upsert_asset
from roadie.catalog.inputs import parse_formats, parse_uuid
from roadie.catalog.views import VersionJob
from roadie.db.models import Asset, Track, TrackVersion, Transcode, User
from roadie.db.session import session_scope
from roadie.errors import InvalidInput, RoadieError
from roadie.storage import Storage, delete_prefix, get_storage, join_key

# ---------------------------------------------------------------- the late-result guard
#
# start_processing claims a version for the current run: attempt + 1, attempt_run_id = the run's flow run id
# (under the row lock). From then on every write of that run to the version, its transcodes, its analysis and the
# objects under its prefix first checks, in the writing transaction, that the version is still its own:
# status and fields by a conditional UPDATE ... WHERE attempt_run_id = :mine, other tables under a FOR SHARE
# lock of the version row (a newer claim waits for the write in progress, and a write after the claim sees it).
# A run that lost its claim gets Superseded (never retried) and changes nothing. Writes of runs that claimed
# nothing (reprocessing flows, the CLI, tests) are not guarded.


class Superseded(RoadieError):
    """A newer run has claimed this version since this run started: this run's results are dropped."""


_RUN_OVERRIDE: ContextVar[uuid.UUID | None] = ContextVar("roadie_run_override", default=None)
# (version, run) pairs this process claimed; a forked flow-run process has only its own.
_CLAIMS: set[tuple[uuid.UUID, uuid.UUID]] = set()


def current_run_id() -> uuid.UUID | None:
    """The flow run this code runs for (from a task too), or as_run()'s id; None outside a run."""
    override = _RUN_OVERRIDE.get()
    if override is not None:
        return override
    if "prefect.context" not in sys.modules:  # the Prefect-free CLI commands are never inside a run
        return None
    # deferred: Prefect costs ~1 s, and `roadie register` and `roadie ingest` (before it starts the API) import
    # the catalogue without it; imported here only once something else has imported it.
    from prefect.context import FlowRunContext, TaskRunContext  # noqa: PLC0415

    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return task_ctx.task_run.flow_run_id
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return flow_ctx.flow_run.id
    return None


@contextmanager
def as_run(run_id: uuid.UUID | str) -> Iterator[uuid.UUID]:
    """Act as run `run_id` (tools and tests that drive the catalogue outside Prefect)."""
    rid = uuid.UUID(str(run_id))
    token = _RUN_OVERRIDE.set(rid)
    try:
        yield rid
    finally:
        _RUN_OVERRIDE.reset(token)


def claimant(vid: uuid.UUID) -> uuid.UUID | None:
    """The run id this write must still own the version as, or None when the current run never claimed it."""
    run = current_run_id()
    return run if run is not None and (vid, run) in _CLAIMS else None


def hold(session: Session, vid: uuid.UUID) -> None:
    """In the caller's transaction: share-lock the version row and check the current run still owns it."""
    mine = claimant(vid)
    if mine is None:
        return
    owner = session.execute(
        select(TrackVersion.attempt_run_id, TrackVersion.attempt)
        .where(TrackVersion.id == vid)
        .with_for_update(read=True)
    ).one_or_none()
    if owner is None or owner.attempt_run_id != mine:
        raise Superseded(
            f"track version {vid} was claimed by a newer run (attempt "
            f"{owner.attempt if owner else '?'}, run {owner.attempt_run_id if owner else '?'}); "
            f"the results of run {mine} are dropped"
        )


@contextmanager
def holding(version_id: str) -> Iterator[None]:
    """Keep the version claimed by this run for the whole block (e.g. while objects are promoted or deleted):
    a newer run's claim waits until the block ends, and a superseded run's block never starts."""
    vid = parse_uuid(version_id)
    if claimant(vid) is None:
        yield
        return
    with session_scope() as session:
        hold(session, vid)
        yield


def _owned(vid: uuid.UUID):
    """The WHERE clause of a guarded UPDATE of the version."""
    mine = claimant(vid)
    clause = TrackVersion.id == vid
    return clause if mine is None else clause & (TrackVersion.attempt_run_id == mine)


def _superseded(vid: uuid.UUID, what: str) -> Superseded:
    return Superseded(f"track version {vid} was claimed by a newer run; not applying {what} of run {claimant(vid)}")


def start_processing(version_id: str, formats: Iterable[str] | None) -> VersionJob:
    """Mark the version `processing` and resolve what to build. ALAC is for whitelisted owners only."""
    vid = parse_uuid(version_id)
    wanted = parse_formats(formats)
    with session_scope() as session:
        row = session.execute(
            select(TrackVersion, Asset, User)
            .join(Asset, Asset.id == TrackVersion.original_asset_id)
            .join(Track, Track.id == TrackVersion.track_id)
            .join(User, User.id == Track.owner_user_id)
            .where(TrackVersion.id == vid)
            .with_for_update(of=TrackVersion)  # the claim: a run writing as the previous owner finishes first
        ).one_or_none()
        if row is None:
            raise InvalidInput(f"track version {version_id} does not exist")
        version, asset, owner = row
        run = current_run_id()
        warnings: list[str] = []
        if "hls_alac" in wanted and not owner.lossless_enabled:
            wanted = tuple(f for f in wanted if f != "hls_alac")
            warnings.append(f"hls_alac skipped: {owner.username} is not whitelisted for lossless")
            if not wanted:
                raise InvalidInput("only hls_alac was asked for, and the owner is not whitelisted for lossless")
        version.status, version.error, version.warnings = "processing", None, list(warnings)
        version.attempt = (version.attempt or 0) + 1
        version.attempt_run_id = run
        session.flush()
        if run is not None:
            _CLAIMS.add((vid, run))
        return VersionJob(
            str(version.id),
            str(version.track_id),
            asset.key,
            Path(asset.key).name,
            wanted,
            tuple(warnings),
            version.attempt,
        )


def add_warning(version_id: str, *messages: str) -> None:
    with session_scope() as session:
        append_warnings(session, version_id, messages)


def append_warnings(session: Session, version_id: str, messages: Iterable[str]) -> None:
    """Each message once: a rerun of a step does not pile up the same warning."""
    vid = parse_uuid(version_id)
    hold(session, vid)
    version = session.get(TrackVersion, vid, with_for_update=True)
    if version is not None:
        existing = list(version.warnings or [])
        version.warnings = existing + [m for m in dict.fromkeys(messages) if m not in existing]


def _updated(session: Session, statement: Update) -> int:
    """The rows an UPDATE matched. Session.execute is typed as returning a Result; for an UPDATE it is a
    CursorResult, which has the rowcount."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def set_media_info(version_id: str, duration_s: float, sample_rate: int, channels: int) -> None:
    vid = parse_uuid(version_id)
    with session_scope() as session:
        changed = _updated(
            session,
            update(TrackVersion)
            .where(_owned(vid))
            .values(duration_ms=round(duration_s * 1000), sample_rate=sample_rate, channels=channels),
        )
        if not changed and claimant(vid) is not None:
            raise _superseded(vid, "the media info")


def mark_failed(version_id: str, message: str, *, stranded_by: uuid.UUID | str | None = None) -> bool:
    """Fail the version and its unfinished transcodes, unless a newer run owns it by now (then nothing changes:
    returns False). `stranded_by`: on behalf of that run, which died without failing it (the dead-letter hook, from
    outside the run): only while the version is unfinished and that run, or none, still owns it."""
    with session_scope() as session:
        vid = parse_uuid(version_id)
        if stranded_by is None:
            owned = _owned(vid)
        else:
            # A retry may have claimed it since (the zombie automation fires a minute or more after the death).
            dead = uuid.UUID(str(stranded_by))
            owned = (
                (TrackVersion.id == vid)
                & TrackVersion.status.in_(("pending", "processing"))
                & or_(TrackVersion.attempt_run_id.is_(None), TrackVersion.attempt_run_id == dead)
            )
        if not _updated(session, update(TrackVersion).where(owned).values(status="failed", error=message)):
            return False
        session.execute(
            update(Transcode)
            .where(Transcode.track_version_id == vid, Transcode.status != "ready")
            .values(status="failed")
        )
        return True


def discard_outputs(version_id: str, storage: Storage | None = None) -> int:
    """A failed version shows nothing: delete every object under its prefix, unless a newer run owns it (its
    objects are not this run's to delete)."""
    storage = storage or get_storage()
    try:
        with holding(version_id):
            return delete_prefix(storage, str(parse_uuid(version_id)))
    except Superseded:
        return 0


def mark_ready(version_id: str, required: Iterable[str], storage: Storage | None = None) -> None:
    """`ready` only once the required renditions' playlists really exist in storage."""
    storage = storage or get_storage()
    vid = parse_uuid(version_id)
    with session_scope() as session:
        rows = {t.format: t for t in session.scalars(select(Transcode).where(Transcode.track_version_id == vid))}
        for fmt in required:
            row = rows.get(fmt)
            if row is None or row.status != "ready":
                raise RuntimeError(f"{fmt} is not ready for version {version_id}")
            playlist = join_key(row.segment_prefix_key or "", "playlist.m3u8")
            if not storage.exists(playlist):
                raise RuntimeError(f"{fmt} playlist {playlist} is missing from storage")
        if not _updated(session, update(TrackVersion).where(_owned(vid)).values(status="ready", error=None)):
            raise _superseded(vid, "`ready`")


def record_transcode(
    version_id: str,
    fmt: str,
    *,
    status: str,
    storage: Storage | None = None,
    playlist_key: str | None = None,
    playlist_size: int = 0,
    prefix: str | None = None,
    bandwidth: int | None = None,
    segment_count: int | None = None,
    duration_s: float | None = None,
    error: str | None = None,
) -> None:
    """One row per (version, format); a rerun updates it in place, never adds a second."""
    storage = storage or get_storage()
    vid = parse_uuid(version_id)
    with session_scope() as session:
        hold(session, vid)
        row = session.scalar(
            select(Transcode).where(Transcode.track_version_id == vid, Transcode.format == fmt).with_for_update()
        )
        if row is None:
            row = Transcode(track_version_id=vid, format=fmt)
            session.add(row)
        values: dict[str, Any] = {"status": status, "error": error}
        if playlist_key is not None:
            values["playlist_asset_id"] = upsert_asset(session, storage, playlist_key, playlist_size).id
        if prefix is not None:
            values.update(
                segment_prefix_key=prefix,
                bandwidth=bandwidth,
                segment_count=segment_count,
                duration_ms=round(duration_s * 1000) if duration_s is not None else None,
            )
        for name, value in values.items():
            setattr(row, name, value)
