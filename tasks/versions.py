"""Thin Prefect tasks over the catalogue and the original: state changes retry (database), input never does."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import task

from roadie.retries import transient_retries
from roadie.storage import get_storage, safe_filename
from tasks import catalog
from tasks.media import ffmpeg

RETRY = transient_retries()


OWNER_LOCK = ".owner"


@contextmanager
def scratch_dir(job: str) -> Iterator[Path]:
    """A private working folder under ROADIE_TMP_DIR, removed however the run ends. A run killed outright (SIGKILL,
    OOM) cannot remove its own: the folder's owner lock (flock, released by the kernel when the process dies) lets
    the next run on the machine find such leftovers and remove them."""
    import fcntl
    import os

    from roadie.settings import get_settings

    parent = get_settings().tmp_dir
    remove_dead_scratch_dirs(Path(parent) if parent else Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"roadie-{job}-", dir=parent) as tmp:
        # Locked before it gets its name, so the sweep never sees an owner file without its lock.
        owner_path = Path(tmp) / f"{OWNER_LOCK}.new"
        with open(owner_path, "w") as owner:
            fcntl.flock(owner, fcntl.LOCK_EX)
            os.rename(owner_path, Path(tmp) / OWNER_LOCK)
            yield Path(tmp)


def remove_dead_scratch_dirs(parent: Path) -> list[Path]:
    """Remove roadie-* working folders whose owner process is gone (their lock is free)."""
    import fcntl
    import shutil

    removed = []
    for directory in parent.glob("roadie-*"):
        try:
            with open(directory / OWNER_LOCK) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a live run holds it
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
        except OSError:  # no owner file (not ours, or not locked yet) or a live owner
            continue
    return removed


@task(name="start-processing", **RETRY)
def start_processing(version_id: str, formats: list[str] | None) -> catalog.VersionJob:
    return catalog.start_processing(version_id, formats)


@task(name="fetch-original", **RETRY)
def fetch_original(job: catalog.VersionJob, workdir: Path) -> Path:
    """Download the original once per run; every step reads this one local copy."""
    dst = workdir / f"original-{safe_filename(job.original_name)}"
    get_storage().download(job.original_key, dst)
    return dst


# Retried on transient errors only (its database write; a bad upload is InvalidInput and fails at once).
@task(name="probe-original", **RETRY)
def probe_original(version_id: str, src: Path) -> ffmpeg.MediaInfo:
    """The run's one probe, passed to every step. An upload over ROADIE_MAX_DURATION_S fails here, before any work."""
    info = ffmpeg.probe(src)
    ffmpeg.check_duration(info)
    catalog.set_media_info(version_id, info.duration_s, info.sample_rate, info.channels)
    return info


@task(name="mark-ready", **RETRY)
def mark_ready(version_id: str, required: list[str]) -> None:
    catalog.mark_ready(version_id, required)


@task(name="add-warning", **RETRY)
def add_warning(version_id: str, message: str) -> None:
    catalog.add_warning(version_id, message)


@task(name="mark-failed", **RETRY)
def mark_failed(version_id: str, message: str) -> None:
    catalog.mark_failed(version_id, message)


@task(name="discard-outputs", **RETRY)
def discard_outputs(version_id: str) -> int:
    """A failed version shows nothing: remove whatever was already published under its prefix (unless a newer run
    owns the version by now: tasks.catalog's guard)."""
    return catalog.discard_outputs(version_id)


def failure_message(exc: BaseException) -> str:
    """What a person reads in track_versions.error: the cause, and what to do about it (never a secret)."""
    from roadie.errors import InvalidInput, is_transient, redact

    if isinstance(exc, InvalidInput):
        return redact(exc)
    if isinstance(exc, ffmpeg.FFmpegError):
        return redact(f"could not transcode the upload ({exc}); check that it is a complete, playable audio file")
    if is_transient(exc):
        from sqlalchemy.exc import DBAPIError

        what = "database" if isinstance(exc, DBAPIError) else "storage"
        return redact(f"{what} unavailable after retries ({type(exc).__name__}: {exc}); retry the job")
    return redact(f"internal error ({type(exc).__name__}: {exc}); retry the job, and report it if it persists")


@task(name="load-version", **RETRY)
def load_job(version_id: str) -> catalog.VersionJob:
    return catalog.load_job(version_id)


def ingest_report(
    version_id: str, analysis, waveform_keys, artwork_keys, duplicates, timings: dict[str, float]
) -> dict:
    """What `roadie ingest --json` and the flow's result show: the version as stored, plus what only this run
    knows (both loudness meters and their comparison, whether the cover was embedded, the duplicate scores)."""
    report = catalog.describe_version(version_id)
    if analysis.loudness is not None:
        report["loudness"] = analysis.as_dict()["loudness"]
    if waveform_keys is not None:
        report["waveform"] = waveform_keys.as_dict()
    if artwork_keys is not None:
        report["artwork"] = artwork_keys.as_dict()
    report["duplicates"] = [match.as_dict() for match in duplicates]
    return {**report, "timings": timings}
