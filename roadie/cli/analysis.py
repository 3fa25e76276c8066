"""`roadie analyze` and `roadie waveform`: the audio analysis on local files, with no database and no storage.

Each command imports what it needs in its own body (each such import marked `noqa: PLC0415`, with what it costs):
`roadie --help` imports none of it, not even the settings (pydantic-settings), and starts in ~0.25 s
(tests/test_cli_startup.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Literal

import typer

from roadie.cli.app import app, emit_json, fail, import_in_background, say

WAVEFORM_FORMATS = ("json", "dat", "png")


@app.command()
def analyze(
    paths: list[Path] = typer.Argument(..., help="Audio files (WAV, FLAC, MP3, M4A, OGG …).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input on stdout."),
) -> None:
    """Loudness (ffmpeg ebur128 cross-checked by pyloudnorm), waveform and fingerprint of each file, from one
    decode. Exit code 1 if any input could not be analysed."""
    import_in_background("pyloudnorm")  # the cross-check's meter: scipy.signal, most of this command's start
    from tasks.media.analysis import analyze_file  # noqa: PLC0415  (deferred: numpy, settings)

    failed = False
    for path in paths:
        try:
            obj = analyze_file(path, png_size=None).as_dict()
            obj["input"] = str(path)
        except Exception as exc:  # reported per input; the other inputs still run
            failed = True
            obj = {"input": str(path), "error": _error_text(exc)}
        if as_json:
            emit_json(obj)
        else:
            typer.echo(_describe(obj))
    if failed:
        raise typer.Exit(1)


def _error_text(exc: BaseException) -> str:
    from roadie.errors import RoadieError  # noqa: PLC0415  (deferred: settings)

    if isinstance(exc, RoadieError):
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc})"


def _fmt(value: Any, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def _describe(obj: dict[str, Any]) -> str:
    """The human-readable form of one `analyze` result."""
    if "error" in obj:
        return f"{obj['input']}: error: {obj['error']}"
    lines = [
        f"{obj['input']}: {obj['duration_s']:.2f} s, {obj['sample_rate']} Hz, {obj['channels']} ch ({obj['codec']})"
    ]
    loud = obj.get("loudness")
    if loud:
        reference = loud["pyloudnorm"]["integrated_lufs"]
        check = "meters agree" if loud["agrees"] else "METERS DISAGREE"
        delta = "" if loud["delta_lu"] is None else f", delta {loud['delta_lu']:+.2f} LU"
        lines.append(
            f"  loudness     {_fmt(loud['integrated_lufs'], 'LUFS')} integrated, LRA "
            f"{_fmt(loud['loudness_range_lu'], 'LU')}, true peak {_fmt(loud['true_peak_dbtp'], 'dBTP')} "
            f"(pyloudnorm {_fmt(reference, 'LUFS', 2)}{delta}: {check})"
        )
    wave = obj.get("waveform")
    if wave:
        lines.append(
            f"  waveform     {wave['length']} pixels at {wave['samples_per_pixel']} samples/pixel, {wave['bits']}-bit"
        )
    fp = obj.get("fingerprint")
    if fp:
        lines.append(f"  fingerprint  {fp['item_count']} items over {fp['duration_s']:.1f} s")
    lines.extend(f"  warning: {w}" for w in obj.get("warnings", []))
    return "\n".join(lines)


@app.command()
def waveform(
    src: Path = typer.Argument(..., help="An audio file.", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="OUT.json, OUT.dat or OUT.png.", show_default=False),
    bits: int = typer.Option(16, "--bits", "-b", help="8 or 16 (JSON and .dat)."),
    pixels_per_second: int | None = typer.Option(
        None, "--pixels-per-second", help="Zoom as pixels per second: sample_rate // N samples per pixel."
    ),
    zoom: int | None = typer.Option(
        None,
        "--zoom",
        "-z",
        help="Samples per pixel (minimum 2). Default 256 for JSON/.dat; a PNG fits the whole track into its width.",
    ),
    split_channels: bool = typer.Option(
        False, "--split-channels", help="One waveform per channel instead of a mono mix."
    ),
    width: int = typer.Option(1800, "--width", "-w", help="PNG width in pixels."),
    height: int = typer.Option(280, "--height", "-h", help="PNG height in pixels."),
) -> None:
    """Waveform data as BBC audiowaveform 1.10 writes it for the same options (JSON v2, binary .dat), or a PNG
    of the whole track."""
    # deferred: numpy, settings
    from roadie.errors import InvalidInput, RoadieError  # noqa: PLC0415
    from tasks.media import waveform as wf  # noqa: PLC0415
    from tasks.media import waveform_builder  # noqa: PLC0415
    from tasks.media.decode import decode_stream  # noqa: PLC0415
    from tasks.media.ffmpeg import UnreadableMedia, check_duration, probe  # noqa: PLC0415

    kind = output.suffix.lower().lstrip(".")
    if kind not in WAVEFORM_FORMATS:
        raise fail(f"the output must end in .json, .dat or .png, not {output.name!r}")
    if bits not in (8, 16):
        raise fail(f"--bits must be 8 or 16, not {bits}")
    depth: Literal[8, 16] = 8 if bits == 8 else 16
    if pixels_per_second is not None and zoom is not None:
        raise fail("give either --pixels-per-second or --zoom, not both")
    if zoom is not None and zoom < 2:
        raise fail(f"invalid zoom {zoom}: the minimum is 2 samples per pixel")
    if pixels_per_second is not None and pixels_per_second < 1:
        raise fail("--pixels-per-second must be at least 1")
    if kind == "png" and (width < 1 or height < 2):
        raise fail("the image must be at least 1 x 2 pixels")
    # A PNG with no zoom fits the whole track into its width, however long the decode turns out to be.
    fit = kind == "png" and pixels_per_second is None and zoom is None
    try:
        info = probe(src)
        check_duration(info)
        spp = wf.samples_per_pixel(info.sample_rate, pixels_per_second=pixels_per_second, zoom=zoom)
        builder = waveform_builder.WaveformBuilder(
            info.sample_rate,
            info.channels,
            spp,
            integer_pcm=info.integer_pcm,
            split_channels=split_channels,
            png_width=width if fit else None,
        )
        decode_stream(src, info, builder.feed)
        data = builder.finish()
        if kind == "json":
            body = data.to_json(depth).encode("ascii")
        elif kind == "dat":
            body = data.to_dat(depth)
        else:
            body = builder.png(width, height) if fit else data.to_png(width, height)
    except UnreadableMedia as exc:
        raise fail(f"{src}: {exc}", 1) from None
    except InvalidInput as exc:  # the options do not fit this file (e.g. too many pixels per second)
        raise fail(str(exc), 2) from None
    except RoadieError as exc:
        raise fail(f"{src}: {exc}", 1) from None
    _write_atomically(output, body)
    detail = f"{width}x{height}" if kind == "png" else f"{bits}-bit"
    scale = "the whole track" if fit else f"{data.length} pixels at {data.samples_per_pixel} samples/pixel"
    say(f"wrote {output} ({kind}, {data.channels} channel(s), {scale}, {detail})")


def _write_atomically(path: Path, body: bytes) -> None:
    """Never a half-written output: write beside it, then rename over it."""
    path = path.expanduser()
    if path.parent and not path.parent.exists():
        raise fail(f"the output folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        tmp.write_bytes(body)
        os.replace(tmp, path)
    except OSError as exc:
        raise fail(f"could not write {path}: {exc.strerror or exc}", 1) from None
    finally:
        tmp.unlink(missing_ok=True)
