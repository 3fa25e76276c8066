"""HLS renditions (fMP4/CMAF) and the multivariant playlist that lists them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import m3u8

from roadie.storage import Storage, join_key, staged
from tasks.media import ffmpeg
from tasks.media.ffmpeg import HLS_FORMATS, ParseError, UnreadableMedia

# Containers whose header states the exact length, so a short decode means a damaged file.
EXACT_LENGTH_CODECS = {
    "flac",
    "pcm_s16le",
    "pcm_s24le",
    "pcm_s32le",
    "pcm_f32le",
    "pcm_u8",
    "alac",
    "pcm_s16be",
    "pcm_s24be",
}


@dataclass(frozen=True)
class MediaPlaylist:
    init_uri: str
    segments: tuple[tuple[float, str], ...]  # (duration_s, uri)

    @property
    def duration_s(self) -> float:
        return sum(d for d, _ in self.segments)


@dataclass(frozen=True)
class LocalRendition:
    format: str
    directory: Path
    playlist: MediaPlaylist
    seconds: float


@dataclass(frozen=True)
class Rendition:
    format: str
    prefix: str
    playlist_key: str
    playlist_size: int
    init_key: str
    segment_keys: tuple[str, ...]
    duration_s: float
    bandwidth: int
    average_bandwidth: int
    codecs: str


def _read_m3u8(text: str) -> m3u8.M3U8:
    """Parse with the m3u8 package in strict mode (a line it does not know is an error, not skipped); a failure
    becomes our ParseError quoting the line it stopped at."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ParseError(f"not an HLS playlist, first line: {lines[0] if lines else ''!r}")
    seen: list[str] = []

    def track(line: str, lineno: int, data: dict, state: dict) -> bool:
        seen.append(line)  # m3u8 calls this before it reads each tag line: the last one is where it failed
        return False

    try:
        return m3u8.M3U8(text, strict=True, custom_tags_parser=track)
    except m3u8.ParseError as exc:
        raise ParseError(f"could not read the playlist line {exc.line!r}") from None
    except (ValueError, TypeError) as exc:
        where = seen[-1] if seen else ""
        raise ParseError(f"could not read the playlist line {where!r} ({exc})") from None


def parse_media_playlist(text: str) -> MediaPlaylist:
    """Read a VOD media playlist as ffmpeg's hls muxer writes it: one EXT-X-MAP init segment, EXTINF segments."""
    playlist = _read_m3u8(text)
    maps = [section.uri for section in playlist.segment_map if section.uri]
    if not maps:
        raise ParseError("playlist has no #EXT-X-MAP init segment")
    if len(set(maps)) > 1:
        raise ParseError(f"playlist has several #EXT-X-MAP init segments: {maps}")
    segments = []
    for segment in playlist.segments:
        if not segment.uri:
            raise ParseError(f"#EXTINF:{segment.duration} with no segment URI after it")
        segments.append((float(segment.duration), segment.uri))
    return MediaPlaylist(maps[0], tuple(segments))


def encode_rendition(
    src: Path,
    out_dir: Path,
    fmt: str,
    *,
    source_duration_s: float,
    source_codec: str,
    segment_seconds: int = 6,
    on_progress: Callable[[float], None] | None = None,
    nice: int = 0,
) -> LocalRendition:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = ffmpeg.run(
        ffmpeg.build_hls_cmd(src, out_dir, fmt, segment_seconds),
        duration_s=source_duration_s,
        on_progress=on_progress,
        nice=nice,
    )
    playlist = parse_media_playlist((out_dir / "playlist.m3u8").read_text())
    check_complete(playlist, source_duration_s, source_codec)
    return LocalRendition(fmt, out_dir, playlist, run.seconds)


def check_complete(playlist: MediaPlaylist, source_duration_s: float, source_codec: str) -> None:
    """A truncated upload must never pass as a good one: its decode comes out shorter than its header says."""
    if not playlist.segments:
        raise UnreadableMedia("the file holds no decodable audio")
    if source_codec in EXACT_LENGTH_CODECS:
        missing = source_duration_s - playlist.duration_s
        if missing > max(0.25, source_duration_s * 0.005):
            raise UnreadableMedia(
                f"the file is truncated or damaged: its header says {source_duration_s:.2f} s "
                f"but only {playlist.duration_s:.2f} s decode; upload the complete file again"
            )


def publish_rendition(storage: Storage, version_id: str, local: LocalRendition) -> Rendition:
    """Upload under `{version_id}/{format}/` through staging: all of it becomes visible, or none."""
    prefix = join_key(version_id, local.format)
    with staged(storage, prefix) as stage:
        stage.put_dir(local.directory)
        stage.promote()
    sizes = [(local.directory / uri).stat().st_size for _, uri in local.playlist.segments]
    init_size = (local.directory / local.playlist.init_uri).stat().st_size
    peak, average = bandwidths(local.playlist, sizes, init_size)
    return Rendition(
        format=local.format,
        prefix=prefix,
        playlist_key=join_key(prefix, "playlist.m3u8"),
        playlist_size=(local.directory / "playlist.m3u8").stat().st_size,
        init_key=join_key(prefix, local.playlist.init_uri),
        segment_keys=tuple(join_key(prefix, uri) for _, uri in local.playlist.segments),
        duration_s=round(local.playlist.duration_s, 3),
        bandwidth=peak,
        average_bandwidth=average,
        codecs=HLS_FORMATS[local.format][1],
    )


def bandwidths(playlist: MediaPlaylist, segment_sizes: Sequence[int], init_size: int) -> tuple[int, int]:
    """Peak and average bit/s as RFC 8216 defines BANDWIDTH and AVERAGE-BANDWIDTH (measured, not nominal)."""
    rates = [8 * size / dur for (dur, _), size in zip(playlist.segments, segment_sizes, strict=False) if dur > 0.5]
    total = sum(segment_sizes) + init_size
    average = 8 * total / playlist.duration_s if playlist.duration_s else 0
    peak = max(rates) if rates else average
    return math.ceil(peak), math.ceil(average)


@dataclass(frozen=True)
class VariantEntry:
    format: str
    uri: str
    bandwidth: int
    average_bandwidth: int | None
    codecs: str


def build_master_playlist(variants: Sequence[VariantEntry]) -> str:
    order = list(HLS_FORMATS)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: order.index(v.format)):
        attrs = f"BANDWIDTH={v.bandwidth}"
        if v.average_bandwidth:
            attrs += f",AVERAGE-BANDWIDTH={v.average_bandwidth}"
        attrs += f',CODECS="{v.codecs}"'
        lines += [f"#EXT-X-STREAM-INF:{attrs}", v.uri]
    return "\n".join(lines) + "\n"


def parse_master_playlist(text: str) -> list[dict[str, str]]:
    """The variants of a multivariant playlist as dicts of the attributes roadie writes (BANDWIDTH,
    AVERAGE-BANDWIDTH, CODECS; values as written) with their `uri` (for tests and tools)."""
    out = []
    for variant in _read_m3u8(text).playlists:
        info = variant.stream_info
        attrs = {"BANDWIDTH": info.bandwidth, "AVERAGE-BANDWIDTH": info.average_bandwidth, "CODECS": info.codecs}
        out.append({**{k: str(v) for k, v in attrs.items() if v is not None}, "uri": variant.uri})
    return out
