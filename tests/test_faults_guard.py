"""The late-result guard of roadie.catalog on real PostgreSQL, run by run, without Prefect: two runs claim the same
version one after the other, and every write of the older one is refused while the newer one's land. (The race
with real flow runs and workers is test_faults.py's case 6.)"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from roadie import catalog
from roadie.catalog import views
from roadie.catalog.registration import register_upload
from tasks.failures.dead_letter import FailedRun, fail_stranded_version
from tests.support import sine, write_wav


def failed_run(run_id: uuid.UUID, version_id: str) -> FailedRun:
    return FailedRun(
        str(run_id),
        "ingest-x",
        "media-ingest",
        "media-ingest",
        {"version_id": version_id},
        "Crashed",
        "no heartbeat",
        1,
        datetime.now(UTC),
    )


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
def test_every_write_of_a_superseded_run_is_refused(roadie_env, tmp_path):
    from roadie.storage import get_storage

    reg = register_upload(write_wav(tmp_path / "a.wav", sine(440, 1, 44100), 44100))
    vid = reg.version_id
    storage = get_storage()
    old, new = uuid.uuid4(), uuid.uuid4()
    with catalog.as_run(old):
        assert catalog.start_processing(vid, ["hls_opus"]).attempt == 1
        catalog.record_transcode(vid, "hls_opus", status="processing")
    with catalog.as_run(new):
        assert catalog.start_processing(vid, ["hls_opus"]).attempt == 2
        catalog.set_media_info(vid, 1.0, 44100, 2)
        storage.put_bytes(f"{vid}/hls_opus/playlist.m3u8", b"#EXTM3U\n")
        catalog.record_transcode(vid, "hls_opus", status="ready", prefix=f"{vid}/hls_opus", segment_count=1)
        catalog.mark_ready(vid, ["hls_opus"])
    with catalog.as_run(old):  # the slow original comes back
        with pytest.raises(catalog.Superseded, match="newer run"):
            catalog.set_media_info(vid, 9.0, 8000, 1)
        with pytest.raises(catalog.Superseded):
            catalog.record_transcode(vid, "hls_opus", status="failed", error="late")
        with pytest.raises(catalog.Superseded):
            catalog.mark_ready(vid, ["hls_opus"])
        with pytest.raises(catalog.Superseded):
            catalog.add_warning(vid, "late warning")
        with pytest.raises(catalog.Superseded), catalog.holding(vid):
            pass
        assert catalog.discard_outputs(vid) == 0  # the newer run's objects stay
        assert catalog.mark_failed(vid, "late failure") is False
    assert fail_stranded_version(failed_run(old, vid)) is False  # a late dead letter of the original, too
    state = views.describe_version(vid)
    assert (state["status"], state["error"], state["warnings"]) == ("ready", None, [])
    assert state["transcodes"] == {
        "hls_opus": {
            "status": "ready",
            "duration_s": 0.0,
            "bandwidth": None,
            "playlist_key": f"{vid}/hls_opus/playlist.m3u8",
            "init_key": f"{vid}/hls_opus/init.mp4",
            "segment_keys": [],
        }
    }
    assert state["duration_s"] == 1.0 and state["sample_rate"] == 44100
    assert storage.list(vid) == [f"{vid}/hls_opus/playlist.m3u8"]

    # Outside any run (the CLI, an operator) nothing is guarded; the owner's own dead letter does fail it.
    catalog.add_warning(vid, "checked by hand")
    with catalog.as_run(new):
        catalog.start_processing(vid, ["hls_opus"])
    assert fail_stranded_version(failed_run(new, vid)) is True
    assert views.describe_version(vid)["status"] == "failed"


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
def test_a_claim_waits_for_a_publish_in_progress(roadie_env, tmp_path):
    """holding() keeps the version share-locked: a newer claim waits until the older run's block is over, and
    afterwards the older run can publish nothing more."""
    reg = register_upload(write_wav(tmp_path / "b.wav", sine(440, 1, 44100), 44100))
    vid = reg.version_id
    old, new = uuid.uuid4(), uuid.uuid4()
    with catalog.as_run(old):
        catalog.start_processing(vid, None)
    claimed = threading.Event()

    def newer() -> None:
        with catalog.as_run(new):
            catalog.start_processing(vid, None)
        claimed.set()

    with catalog.as_run(old):
        with catalog.holding(vid):
            thread = threading.Thread(target=newer)
            thread.start()
            time.sleep(1.0)
            assert not claimed.is_set()  # waiting for the block
            catalog.record_transcode(vid, "hls_opus", status="ready")  # the older run's write inside still lands
        thread.join(30)
        assert claimed.is_set()
        with pytest.raises(catalog.Superseded):
            catalog.record_transcode(vid, "hls_opus", status="failed")
    assert views.ready_transcodes(vid)[0].format == "hls_opus"
