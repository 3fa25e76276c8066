"""Prefect tasks around `tasks.media.fingerprint`: fingerprint, store, find and report duplicates."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from roadie.db.session import session_scope
from roadie.retries import transient_retries
from tasks.catalog import results
from tasks.media import fingerprint
from tasks.media.fingerprint import DuplicateMatch, Fingerprint


@task(name="find-duplicates", cache_policy=NO_CACHE, **transient_retries())
def record_fingerprint(
    version_id: str, fp: Fingerprint, threshold: float = fingerprint.DUPLICATE_THRESHOLD
) -> list[DuplicateMatch]:
    """Store the fingerprint, look for other tracks with the same audio, report each one found. One transaction,
    so a retry after a lost connection starts clean."""
    with session_scope() as session:
        results.store_fingerprint(session, version_id, fp)
        matches = results.find_duplicates(session, version_id, fp, threshold)
        results.report_duplicates(session, version_id, matches)
    if matches:
        create_table_artifact(
            [
                {
                    "matched version": m.version_id,
                    "track": m.track_id,
                    "score": m.score,
                    "bit error rate": m.ber,
                    "offset (s)": m.offset_s,
                }
                for m in matches
            ],
            key=f"duplicates-{version_id}",
            description=f"Track version {version_id} has the same audio as {len(matches)} other version(s)",
        )
    return matches
