"""The ffmpeg module: argument lists, the typed error with its stderr tail, parsers that quote what they can't read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.media import ffmpeg
from tasks.media.hls import VariantEntry, build_master_playlist, parse_master_playlist, parse_media_playlist
from tests.support import sine, write_wav


def test_builders_return_argument_lists_with_safe_inputs(tmp_path):
    cmd = ffmpeg.build_hls_cmd(Path("concat:a|b.wav"), tmp_path, "hls_opus")
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    src = cmd[cmd.index("-i") + 1]
    assert src.startswith("file:/") and src.endswith("concat:a|b.wav")  # a name can't select a protocol
    assert cmd[cmd.index("-hls_segment_type") + 1] == "fmp4"
    assert cmd[cmd.index("-hls_time") + 1] == "6"
    assert cmd[cmd.index("-hls_fmp4_init_filename") + 1] == "init.mp4"
    assert cmd[cmd.index("-c:a") + 1] == "libopus" and cmd[cmd.index("-b:a") + 1] == "160k"


def test_unknown_format_is_invalid_input(tmp_path):
    with pytest.raises(ffmpeg.InvalidInput):
        ffmpeg.build_hls_cmd(tmp_path / "x.wav", tmp_path, "hls_mp3")


def test_run_raises_typed_error_with_stderr_tail(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(ffmpeg.FFmpegError) as info:
        ffmpeg.run(ffmpeg.build_hls_cmd(missing, tmp_path, "hls_aac"))
    err = info.value
    assert err.returncode != 0 and "missing.wav" in err.stderr_tail
    assert "No such file" in str(err)
    assert len(err.stderr_tail.splitlines()) <= ffmpeg.STDERR_TAIL_LINES


def test_run_refuses_a_shell_string():
    with pytest.raises(TypeError):
        ffmpeg.run("ffmpeg -i x.wav out.wav")


def test_run_reports_progress(tmp_path):
    src = write_wav(tmp_path / "tone.wav", sine(440, 8, 44100), 44100)
    seen: list[float] = []
    (tmp_path / "o").mkdir()
    ffmpeg.run(ffmpeg.build_hls_cmd(src, tmp_path / "o", "hls_alac"), duration_s=8, on_progress=seen.append)
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)


@pytest.mark.parametrize("sr,channels", [(44100, 1), (48000, 2)])
def test_probe(tmp_path, sr, channels):
    src = write_wav(tmp_path / "t.wav", sine(440, 2.5, sr, channels=channels), sr)
    info = ffmpeg.probe(src)
    assert (info.sample_rate, info.channels, info.codec) == (sr, channels, "pcm_s16le")
    assert info.duration_s == pytest.approx(2.5, abs=1e-3)


def test_probe_rejects_non_audio(tmp_path):
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    with pytest.raises(ffmpeg.UnreadableMedia, match="empty"):
        ffmpeg.probe(empty)
    text = tmp_path / "t.mp3"
    text.write_text("hello " * 100)
    with pytest.raises(ffmpeg.UnreadableMedia):
        ffmpeg.probe(text)


def test_banner_fallback_parser_matches_ffprobe(tmp_path):
    import subprocess

    src = write_wav(tmp_path / "t.wav", sine(440, 3.25, 48000, channels=2), 48000)
    banner = subprocess.run([ffmpeg.ffmpeg_binary(), "-hide_banner", "-i", str(src)], capture_output=True, text=True)
    fallback = ffmpeg.parse_ffmpeg_banner(banner.stderr)
    probed = ffmpeg.probe(src)
    # The banner names no bit depth for plain PCM and guesses a layout ffprobe leaves unknown; the rest agrees.
    fields = ("codec", "sample_rate", "channels", "duration_s", "has_cover", "sample_format", "integer_pcm")
    assert [getattr(fallback, f) for f in fields] == [getattr(probed, f) for f in fields]
    assert probed.sample_format == "s16" and probed.integer_pcm


def test_banner_parser_quotes_the_line_it_cannot_read():
    banner = "  Duration: 00:00:03.25, bitrate: 1536 kb/s\n  Stream #0:0: Audio: pcm_s16le, 48000 Hz, weird-layout\n"
    with pytest.raises(ffmpeg.ParseError, match="weird-layout"):
        ffmpeg.parse_ffmpeg_banner(banner)


def test_playlist_parser_quotes_bad_lines():
    with pytest.raises(ffmpeg.ParseError, match="#EXTINF:abc"):
        parse_media_playlist('#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:abc,\nsegment_000.m4s\n')
    with pytest.raises(ffmpeg.ParseError, match="segment_000"):
        parse_media_playlist('#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\nsegment_000.m4s\n')


def test_master_playlist_roundtrip():
    text = build_master_playlist(
        [
            VariantEntry("hls_aac", "hls_aac/playlist.m3u8", 262000, 255000, "mp4a.40.2"),
            VariantEntry("hls_opus", "hls_opus/playlist.m3u8", 170000, None, "opus"),
        ]
    )
    variants = parse_master_playlist(text)
    assert [v["uri"] for v in variants] == ["hls_opus/playlist.m3u8", "hls_aac/playlist.m3u8"]
    assert variants[1] == {
        "BANDWIDTH": "262000",
        "AVERAGE-BANDWIDTH": "255000",
        "CODECS": "mp4a.40.2",
        "uri": "hls_aac/playlist.m3u8",
    }
    assert text.startswith("#EXTM3U\n") and "#EXT-X-INDEPENDENT-SEGMENTS" in text


def test_global_options_come_first_and_hide_the_banner(tmp_path):
    """ffmpeg finds -hide_banner in an early scan that skips the argument after a "-" output: roadie's global
    options go before the inputs, and a real run with a "-" output prints no banner."""
    src = write_wav(tmp_path / "t.wav", sine(440, 1, 48000, channels=2), 48000)
    commands = [
        ffmpeg.build_hls_cmd(src, tmp_path, "hls_aac"),
        ffmpeg.build_decode_cmd(src, sample_rate=8000),
        ffmpeg.build_extract_cover_cmd(src, tmp_path / "c.jpg"),
        ffmpeg.build_ebur128_cmd(src, "ebur128"),
        ffmpeg.build_decode_pcm_cmd(src, sample_rate=48000, max_seconds=5),
        ffmpeg.build_measure_pcm_cmd(48000, 2, "ebur128"),
    ]
    for cmd in commands:
        first_input = min(cmd.index(opt) for opt in ("-i", "-f", "-t", "-ss") if opt in cmd)
        assert {"-hide_banner", "-nostdin", "-y", "-nostats"} <= set(cmd[1:first_input]), cmd
    ebur128 = ffmpeg.run(ffmpeg.build_ebur128_cmd(src, "ebur128"))
    assert "Summary:" in ebur128.stderr and "ffmpeg version" not in ebur128.stderr
    pcm = ffmpeg.run(ffmpeg.build_decode_pcm_cmd(src, sample_rate=48000), capture_stdout=True)
    measured = ffmpeg.run(ffmpeg.build_measure_pcm_cmd(48000, 2, "ebur128"), stdin_data=pcm.stdout)
    assert len(pcm.stdout) == 48000 * 2 * 4
    assert "Summary:" in measured.stderr and "ffmpeg version" not in measured.stderr
