"""The transcode flow: reprocess renditions of an existing version."""

from __future__ import annotations

import pytest

from roadie.catalog.registration import register_upload
from roadie.storage import get_storage
from tasks.media.hls import parse_master_playlist
from tests.support import music_like, write_wav


@pytest.mark.parametrize("roadie_env", ["s3"], indirect=True)
def test_transcode_adds_a_rendition_to_a_ready_version(roadie_env, prefect_api, tmp_path):
    from flows.ingest import media_ingest
    from flows.transcode import transcode

    src = write_wav(tmp_path / "t.wav", music_like(7, 44100, 2), 44100)
    reg = register_upload(src)
    assert media_ingest(reg.version_id, ["hls_opus"])["status"] == "ready"
    result = transcode(reg.version_id, ["hls_aac"])
    assert result["status"] == "ready"
    assert {f: t["status"] for f, t in result["transcodes"].items()} == {"hls_opus": "ready", "hls_aac": "ready"}
    master = parse_master_playlist(get_storage().get_bytes(f"{reg.version_id}/master.m3u8").decode())
    assert [v["CODECS"] for v in master] == ["opus", "mp4a.40.2"]
    # Each rendition's progress artifact ends at 100 %, however few updates a 7 s encode gave it.
    import httpx

    runs = (
        httpx.post(
            f"{prefect_api}/flow_runs/filter",
            json={"flow_runs": {"name": {"any_": [f"ingest-{reg.version_id}", f"transcode-{reg.version_id}"]}}},
        )
        .raise_for_status()
        .json()
    )
    artifacts = (
        httpx.post(
            f"{prefect_api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [r["id"] for r in runs]}, "type": {"any_": ["progress"]}}},
        )
        .raise_for_status()
        .json()
    )
    assert sorted(a["key"] for a in artifacts) == ["transcode-hls-aac", "transcode-hls-opus"]
    assert [a["data"] for a in artifacts] == [100.0, 100.0]


def test_transcode_of_unknown_version_fails_clearly(roadie_env, prefect_api):
    from flows.transcode import transcode

    with pytest.raises(Exception, match="does not exist"):
        transcode("00000000-0000-0000-0000-000000000000", ["hls_opus"])
