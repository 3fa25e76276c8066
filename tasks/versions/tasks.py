"""Thin Prefect tasks over the catalogue and the original: state changes retry (database), input never does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import task

from roadie import catalog
from roadie.catalog import views
from roadie.catalog.views import VersionJob
from roadie.retries import transient_retries
from roadie.storage import get_storage, safe_filename
from tasks.media import ffmpeg

RETRY = transient_retries()


@task(**RETRY)
def start_processing(version_id: str, formats: Sequence[str] | None) -> VersionJob:
    return catalog.start_processing(version_id, formats)


@task(**RETRY)
def fetch_original(job: VersionJob, workdir: Path) -> Path:
    """Download the original once per run; every step reads this one local copy."""
    dst = workdir / f"original-{safe_filename(job.original_name)}"
    get_storage().download(job.original_key, dst)
    return dst


# Retried on transient errors only (its database writes; a bad upload is InvalidInput and fails at once).
@task(**RETRY)
def probe_original(version_id: str, src: Path, formats: Sequence[str] = ()) -> ffmpeg.MediaInfo:
    """The run's one probe, passed to every step. An upload over ROADIE_MAX_DURATION_S fails here, before any work.
    A readable one is the point from which its renditions are `processing` (their encodes may still wait for a
    slot): recorded here, not by a task of its own per rendition, since each task run costs the Prefect server its
    events and records (bench/load)."""
    info = ffmpeg.probe(src)
    ffmpeg.check_duration(info)
    catalog.set_media_info(version_id, info.duration_s, info.sample_rate, info.channels)
    for fmt in formats:
        catalog.record_transcode(version_id, fmt, status="processing")
    return info


@task(**RETRY)
def add_warning(version_id: str, message: str) -> None:
    catalog.add_warning(version_id, message)


@task(**RETRY)
def mark_failed(version_id: str, message: str) -> None:
    catalog.mark_failed(version_id, message)


@task(**RETRY)
def record_transcode(version_id: str, fmt: str, status: str, error: str | None = None) -> None:
    """A rendition's outcome as the flow saw it (e.g. `failed`, with the reason)."""
    catalog.record_transcode(version_id, fmt, status=status, error=error)


@task(**RETRY)
def discard_outputs(version_id: str) -> int:
    """A failed version shows nothing: remove whatever was already published under its prefix (unless a newer run
    owns the version by now: roadie.catalog's guard)."""
    return catalog.discard_outputs(version_id)


@task(**RETRY)
def load_job(version_id: str) -> VersionJob:
    return views.load_job(version_id)
