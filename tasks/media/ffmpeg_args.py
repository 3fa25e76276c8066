"""The argument lists of roadie's ffmpeg commands (never a shell string), built with ffmpeg-python (`_compile`),
and the binaries they name. Nothing here runs anything: tasks.media.ffmpeg does, and exposes these builders."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import ffmpeg as ffmpeg_python

from roadie.errors import InvalidInput
from roadie.settings import get_settings

# format -> (encoder options, CODECS attribute for the multivariant playlist, nominal bandwidth in bit/s)
HLS_FORMATS: dict[str, tuple[dict[str, str], str, int]] = {
    "hls_opus": ({"c:a": "libopus", "b:a": "160k"}, "opus", 160_000),
    "hls_aac": ({"c:a": "aac", "b:a": "256k"}, "mp4a.40.2", 256_000),
    "hls_alac": ({"c:a": "alac"}, "alac", 1_411_200),
}


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """System ffmpeg first (it has ffprobe beside it), then the static build in imageio-ffmpeg."""
    configured = get_settings().ffmpeg_binary
    if configured:
        return configured
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # noqa: PLC0415 - the fallback only (~12 ms of every command's start otherwise)

    return imageio_ffmpeg.get_ffmpeg_exe()


@lru_cache(maxsize=1)
def ffprobe_binary() -> str | None:
    candidate = Path(ffmpeg_binary()).with_name("ffprobe")
    return str(candidate) if candidate.exists() else shutil.which("ffprobe")


def as_input(path: Path | str) -> str:
    """An input argument ffmpeg cannot mistake for a protocol (`concat:`, `http:`) or an option."""
    return "file:" + str(Path(path).resolve())


# ---------------------------------------------------------------- builders


def build_hls_cmd(src: Path, out_dir: Path, fmt: str, segment_seconds: int = 6) -> list[str]:
    """HLS fMP4/CMAF: init.mp4 + segment_%03d.m4s + playlist.m3u8 in out_dir."""
    if fmt not in HLS_FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose from {', '.join(HLS_FORMATS)}")
    encoder, _, _ = HLS_FORMATS[fmt]
    stream = ffmpeg_python.input(as_input(src)).output(
        as_input(out_dir / "playlist.m3u8"),
        map="0:a:0",
        vn=None,
        **encoder,
        f="hls",
        hls_time=str(segment_seconds),
        hls_list_size="0",
        hls_playlist_type="vod",
        hls_segment_type="fmp4",
        hls_fmp4_init_filename="init.mp4",
        hls_segment_filename=str(out_dir / "segment_%03d.m4s"),
    )
    return _compile(stream)


def build_decode_cmd(
    src: Path,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    sample_fmt: str = "f32le",
    start_s: float | None = None,
) -> list[str]:
    """Decode the first audio stream to raw interleaved PCM on stdout."""
    input_opts = {"ss": str(start_s)} if start_s else {}
    out_opts: dict[str, str] = {"map": "0:a:0", "f": sample_fmt, "c:a": f"pcm_{sample_fmt}"}
    if sample_rate:
        out_opts["ar"] = str(sample_rate)
    if channels:
        out_opts["ac"] = str(channels)
    stream = ffmpeg_python.input(as_input(src), **input_opts).output("pipe:1", **out_opts)
    return _compile(stream, progress=False)


def build_extract_cover_cmd(src: Path, dst: Path) -> list[str]:
    """Copy the attached picture stream (MP3 APIC, FLAC picture, M4A covr) out unchanged."""
    stream = ffmpeg_python.input(as_input(src)).output(as_input(dst), map="0:v:0", an=None, c="copy", frames="1")
    return _compile(stream, progress=False)


def _compile(stream: ffmpeg_python.nodes.OutputStream, *extra: str, progress: bool = True) -> list[str]:
    """The argument list of one ffmpeg command, roadie's global options first. -nostdin: a worker has no terminal;
    -y: outputs live in our own temp dirs; -progress pipe:1: `run` reads it for on_progress."""
    flags = ["-hide_banner", "-nostdin", "-y", *(["-progress", "pipe:1"] if progress else []), "-nostats", *extra]
    # Given as compile's command prefix, not .global_args() (which puts them after the outputs): ffmpeg looks for
    # -hide_banner in an early scan that skips the argument after a "-" output, so it must come before it.
    return list(stream.compile(cmd=[ffmpeg_binary(), *flags]))


def build_ebur128_cmd(src: Path, filter_spec: str) -> list[str]:
    """Run the first audio stream through a measuring filter (ebur128) and discard the audio."""
    stream = ffmpeg_python.input(as_input(src)).output("-", map="0:a:0", af=filter_spec, f="null")
    return _compile(stream, progress=False)


def build_decode_pcm_cmd(src: Path, *, sample_rate: int, max_seconds: float | None = None) -> list[str]:
    """Decode the first audio stream once: float32 interleaved PCM at `sample_rate` on stdout, channels as they
    are (no -ac: it would remix a 3.0 layout into 2.1). -xerror turns a decode error (a truncated FLAC) into a
    failure instead of silently concealed audio. `max_seconds` stops reading there (-t on the input), whatever
    the header says."""
    limit = {"t": f"{max_seconds:.6f}"} if max_seconds else {}
    stream = ffmpeg_python.input(as_input(src), **limit).output(
        "pipe:1", map="0:a:0", f="f32le", ar=str(int(sample_rate)), **{"c:a": "pcm_f32le"}
    )
    return _compile(stream, "-xerror", progress=False)


def build_measure_pcm_cmd(
    sample_rate: int, channels: int, filter_spec: str, channel_layout: str | None = None
) -> list[str]:
    """Run a measuring filter (ebur128) over float32 interleaved PCM read from stdin: audio roadie has already
    decoded, so the original is not decoded a second time. The source's channel layout, when known, keeps
    ebur128's channel weights right (raw PCM alone would be guessed as the default layout, 3 channels as 2.1)."""
    layout = {"ch_layout": channel_layout} if channel_layout else {"ac": str(int(channels))}
    stream = ffmpeg_python.input("pipe:0", f="f32le", ar=str(int(sample_rate)), **layout).output(
        "-", af=filter_spec, f="null"
    )
    return _compile(stream, progress=False)
