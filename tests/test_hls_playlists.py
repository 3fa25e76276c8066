"""Playlists read through the m3u8 package (tasks.media.hls): the ones ffmpeg's hls muxer really writes for each
format, the multivariant playlist roadie writes, and what is refused, quoting the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.media import ffmpeg
from tasks.media.hls import VariantEntry, build_master_playlist, parse_master_playlist, parse_media_playlist
from tests.support import sine, write_wav


@pytest.fixture(scope="module")
def renditions(tmp_path_factory) -> dict[str, Path]:
    """One real encode per format of a 20.5 s stereo tone (four 6 s segments, the last one short)."""
    root = tmp_path_factory.mktemp("hls")
    src = write_wav(root / "tone.wav", sine(440, 20.5, 44100, channels=2), 44100)
    out = {}
    for fmt in ffmpeg.HLS_FORMATS:
        (root / fmt).mkdir()
        ffmpeg.run(ffmpeg.build_hls_cmd(src, root / fmt, fmt))
        out[fmt] = root / fmt
    return out


@pytest.mark.parametrize("fmt", list(ffmpeg.HLS_FORMATS))
def test_media_playlists_ffmpeg_writes_are_read_whole(renditions, fmt):
    directory = renditions[fmt]
    text = (directory / "playlist.m3u8").read_text()
    playlist = parse_media_playlist(text)
    assert playlist.init_uri == "init.mp4" and (directory / "init.mp4").stat().st_size > 0
    # Every segment on disk is listed, in order, each with the duration its #EXTINF line states.
    assert [uri for _, uri in playlist.segments] == sorted(p.name for p in directory.glob("*.m4s"))
    extinf = [float(ln.split(":", 1)[1].rstrip(",")) for ln in text.splitlines() if ln.startswith("#EXTINF:")]
    assert [d for d, _ in playlist.segments] == extinf
    assert len(playlist.segments) == 4
    assert playlist.duration_s == pytest.approx(20.5, abs=0.05)


def test_master_playlist_is_read_back_as_written(renditions):
    variants = [
        VariantEntry("hls_alac", "hls_alac/playlist.m3u8", 1_411_200, 1_400_000, "alac"),
        VariantEntry("hls_aac", "hls_aac/playlist.m3u8", 262_000, 255_000, "mp4a.40.2"),
        VariantEntry("hls_opus", "hls_opus/playlist.m3u8", 170_000, None, "opus"),
    ]
    read = parse_master_playlist(build_master_playlist(variants))
    assert read == [
        {"BANDWIDTH": "170000", "CODECS": "opus", "uri": "hls_opus/playlist.m3u8"},
        {"BANDWIDTH": "262000", "AVERAGE-BANDWIDTH": "255000", "CODECS": "mp4a.40.2", "uri": "hls_aac/playlist.m3u8"},
        {"BANDWIDTH": "1411200", "AVERAGE-BANDWIDTH": "1400000", "CODECS": "alac", "uri": "hls_alac/playlist.m3u8"},
    ]


MAP = '#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n'


@pytest.mark.parametrize(
    "text,quoted",
    [
        ("", "not an HLS playlist"),
        ("segment_000.m4s\n", "segment_000.m4s"),
        (MAP + "#EXTINF:abc,\nsegment_000.m4s\n", "#EXTINF:abc"),
        (MAP + "segment_000.m4s\n", "segment_000.m4s"),  # a segment with no #EXTINF before it
        (MAP + "#EXTINF:6.0,\nsegment_000.m4s\n#EXTINF:2.5,\n", "#EXTINF:2.5"),  # and no segment after it
        (MAP + "#EXTINF:6.0,\nsegment_000.m4s\n#EXT-X-UNHEARD-OF:1\n", "#EXT-X-UNHEARD-OF:1"),  # strict: not skipped
        ("#EXTM3U\n#EXTINF:6.0,\nsegment_000.m4s\n", "no #EXT-X-MAP"),
        (MAP + '#EXTINF:6.0,\nsegment_000.m4s\n#EXT-X-MAP:URI="other.mp4"\n#EXTINF:6.0,\nsegment_001.m4s\n', "other"),
    ],
)
def test_media_playlist_refusals_quote_the_line(text, quoted):
    with pytest.raises(ffmpeg.ParseError, match=quoted):
        parse_media_playlist(text)


def test_master_variant_without_stream_inf_is_refused():
    with pytest.raises(ffmpeg.ParseError, match="hls_aac/playlist.m3u8"):
        parse_master_playlist("#EXTM3U\n#EXT-X-VERSION:7\nhls_aac/playlist.m3u8\n")
