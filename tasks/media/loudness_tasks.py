"""Prefect tasks around `tasks.media.loudness`: measure, record on the version, show a table artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from roadie.db.session import session_scope
from roadie.progress import in_prefect_run
from roadie.retries import transient_retries
from tasks.catalog import results
from tasks.media.loudness import LoudnessResult


def loudness_table(result: LoudnessResult) -> list[dict[str, object]]:
    rows = []
    for meter, reading in (("ffmpeg ebur128", result.ffmpeg), ("pyloudnorm + numpy", result.pyloudnorm)):
        rows.append(
            {
                "meter": meter,
                "integrated (LUFS)": _round(reading.integrated_lufs),
                "range (LU)": _round(reading.loudness_range_lu),
                "true peak (dBTP)": _round(reading.true_peak_dbtp),
            }
        )
    rows.append(
        {"meter": "difference", "integrated (LUFS)": result.delta_lu, "range (LU)": None, "true peak (dBTP)": None}
    )
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@task(name="record-loudness", cache_policy=NO_CACHE, **transient_retries())
def record_loudness(version_id: str, result: LoudnessResult) -> None:
    """ffmpeg's values onto the version, the warnings into its list, and a table a person can read."""
    with session_scope() as session:
        results.save_loudness(session, version_id, result)
    loudness_artifact(version_id, result)


def loudness_artifact(version_id: str, result: LoudnessResult) -> None:
    if not in_prefect_run():
        return
    verdict = "the meters agree" if result.agrees else "the meters DISAGREE: " + "; ".join(result.warnings)
    create_table_artifact(
        loudness_table(result),
        key=f"loudness-{version_id}",
        description=f"Loudness of track version {version_id}: {verdict}",
    )
