"""artwork-extract: take one version's embedded cover art again (reprocessing)."""

from __future__ import annotations

from prefect import flow

from roadie.params import VersionId
from tasks.media.tasks import extract_artwork, publish_artwork
from tasks.versions.scratch import scratch_dir
from tasks.versions.tasks import fetch_original, load_job


@flow(name="artwork-extract", flow_run_name="artwork-{version_id}")
def artwork_extract(version_id: VersionId) -> dict:
    """The cover and its 200x200 thumbnail, or the bundled default; the track points at them."""
    job = load_job(version_id)
    with scratch_dir("artwork") as workdir:
        src = fetch_original(job, workdir)
        art = extract_artwork(src, workdir)
    return {**publish_artwork(version_id, art).as_dict(), "warnings": list(art.warnings)}
