"""fingerprint: refingerprint one version and look for duplicates again (reprocessing)."""

from __future__ import annotations

from prefect import flow

from roadie.params import VersionId
from tasks.media.analysis import require_fingerprint
from tasks.media.tasks import analyze_audio, record_fingerprint
from tasks.versions.scratch import scratch_dir
from tasks.versions.tasks import fetch_original, load_job


@flow(name="fingerprint", flow_run_name="fingerprint-{version_id}")
def fingerprint(version_id: VersionId) -> dict:
    """Chromaprint of the original, stored; every other track with the same audio is reported (once)."""
    job = load_job(version_id)
    with scratch_dir("fingerprint") as workdir:
        src = fetch_original(job, workdir)
        fp = require_fingerprint(analyze_audio(src, steps=("fingerprint",)))
    matches = record_fingerprint(version_id, fp)
    return {
        "version_id": version_id,
        "items": len(fp.items),
        "duplicates": [m.as_dict() for m in matches],
    }
