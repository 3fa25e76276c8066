"""`roadie ingest`: register uploads and run the media pipeline on them, on whatever backends are configured.

Each command imports what it needs in its own body (each such import marked `noqa: PLC0415`, with what it costs):
`roadie --help` imports none of it, not even the settings (pydantic-settings), and starts in ~0.25 s
(tests/test_cli_startup.py). Prefect comes only after ensure_api(): it reads PREFECT_API_URL and PREFECT_HOME once, at
import."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from roadie.cli.app import app, emit_json, say

if TYPE_CHECKING:
    from roadie.params import Format


def prepare_database() -> None:
    """The embedded SQLite database migrates itself; a shared PostgreSQL is migrated by `roadie db upgrade`."""
    # deferred: SQLAlchemy, settings
    from roadie.db.session import upgrade_if_behind  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    if get_settings().database_url.startswith("sqlite"):
        upgrade_if_behind()  # Alembic only when the schema is behind: one SELECT otherwise


def prepare_prefect(verbose: bool) -> str:
    from roadie.prefect_local import ensure_api  # noqa: PLC0415  (deferred: settings, httpx)

    url = ensure_api()  # first: a local server it starts inherits this environment, and must keep its own log
    if not verbose:
        # Runs still log everything to the server (the UI shows it); only the terminal is spared Prefect's lines
        # and the tracebacks of expected failures, which `_show` reports in one line each.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    # deferred: settings; Prefect after ensure_api()
    from roadie import prefect_tls  # noqa: PLC0415
    from roadie.limits import ensure_limits  # noqa: PLC0415

    prefect_tls.share()  # the run's dozen clients share one TLS context
    ensure_limits()
    return url


class ProgressPrinter:
    """One stderr line per rendition every 10 %."""

    def __init__(self) -> None:
        self.shown: dict[tuple[str, str], int] = {}

    def __call__(self, version_id: str, step: str, percent: float) -> None:
        bucket = int(percent // 10) * 10
        key = (version_id, step)
        if bucket > self.shown.get(key, -10):
            self.shown[key] = bucket
            sys.stderr.write(f"  {version_id[:8]} {step:<9} {bucket:3d}%\n")
            sys.stderr.flush()


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Audio files to ingest (WAV, FLAC, MP3, M4A, OGG …)."),
    formats: str | None = typer.Option(
        None,
        help="Comma-separated renditions, primary first: hls_opus,hls_aac,hls_alac. Default: ROADIE_DEFAULT_FORMATS.",
    ),
    title: str | None = typer.Option(None, help="Track title (default: the file name)."),
    owner: str = typer.Option(
        "demo-artist",
        help="Username of the owning artist (created if new). Asking for "
        "hls_alac here whitelists the owner for lossless.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    """Register each upload and run the media-ingest flow on it. Exit code 1 if any input failed."""
    # deferred: SQLAlchemy, settings
    from roadie.catalog.inputs import parse_formats  # noqa: PLC0415
    from roadie.errors import InvalidInput  # noqa: PLC0415

    try:
        # parse_formats refuses any name not in FORMATS, which roadie.params.Format spells out (it asserts so).
        wanted = cast("list[Format]", list(parse_formats(formats)))
    except InvalidInput as exc:
        say(f"error: {exc}")
        raise typer.Exit(2) from None
    prepare_database()
    api = prepare_prefect(verbose)
    if not as_json:
        say(f"Prefect UI: {api.removesuffix('/api')}")
    # deferred: Prefect (the flow), only now that prepare_prefect() has pointed it at the server
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: PLC0415

    from flows.ingest import media_ingest  # noqa: PLC0415
    from roadie import progress  # noqa: PLC0415
    from roadie.catalog.registration import register_upload  # noqa: PLC0415
    from roadie.catalog.views import describe_version  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415
    from tasks.versions.report import failure_message  # noqa: PLC0415

    printer = ProgressPrinter()
    progress.add_listener(printer)
    any_failed = False
    for path in paths:
        result: dict = {"input": str(path)}
        try:
            reg = register_upload(path, title=title, owner=owner, lossless="hls_alac" in wanted)
        except Exception as exc:
            _reraise_bugs(exc)
            any_failed = True
            result.update(
                version_id=None,
                status="failed",
                error=failure_message(exc),
                storage_url=get_settings().storage_url,
                master_key=None,
                transcodes={},
                warnings=[],
            )
            _show(result, as_json, exc)
            continue
        say(f"ingesting {path} as version {reg.version_id}")
        try:
            # No heartbeats for a run in this process: the crash automation watches deployed runs (tagged roadie)
            # only, and at the end of each run Prefect joins the heartbeat thread mid-sleep, up to 1 s of waiting.
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                result.update(media_ingest(reg.version_id, wanted))
            failure = None
        except Exception as exc:  # the version row carries the reason; describe_version reports it
            failure = exc
            try:
                result.update(describe_version(reg.version_id))
            except Exception as unreadable:  # the database went away too: say so rather than crash
                _reraise_bugs(unreadable)
                result.update(
                    version_id=reg.version_id,
                    status="failed",
                    error=failure_message(unreadable),
                    transcodes={},
                    warnings=[],
                )
        any_failed |= result["status"] != "ready"
        _show(result, as_json, failure)
        if failure is not None and not _expected(failure):
            _print_traceback(failure)  # a bug in roadie: the person reporting it needs the traceback
    progress.remove_listener(printer)
    raise typer.Exit(1 if any_failed else 0)


def _expected(exc: BaseException) -> bool:
    """Failures the pipeline is built to meet (bad input, a missing tool, storage or database down after retries)
    are reported in one line; anything else is a bug in roadie and keeps its traceback."""
    from roadie.errors import RoadieError, is_transient  # noqa: PLC0415  (deferred: settings)

    return isinstance(exc, RoadieError) or is_transient(exc)


def _reraise_bugs(exc: BaseException) -> None:
    if not _expected(exc):
        raise exc


def _print_traceback(exc: BaseException) -> None:
    sys.stderr.write("".join(traceback.format_exception(exc)))


def _advice(exc: BaseException | None) -> str:
    from roadie.errors import InvalidInput, is_transient  # noqa: PLC0415  (deferred: settings)

    if isinstance(exc, InvalidInput):
        return "nothing was published; fix or re-export the file, then ingest it again"
    if exc is not None and is_transient(exc):
        return "nothing was published; run the same command again once storage and the database answer"
    return "nothing was published; see the error, then ingest the file again"


def _show(result: dict, as_json: bool, exc: BaseException | None = None) -> None:
    if as_json:
        emit_json(result)
        if result["status"] != "ready":  # stdout stays machine-readable; a person still gets the one line
            say(f"failed: {result['input']}: {result['error']} ({_advice(exc)})")
        return
    if result["status"] == "ready":
        say(f"ready: {result['input']}")
        say(f"  master playlist: {result['storage_url']}/{result['master_key']}")
        for fmt, t in result["transcodes"].items():
            say(
                f"  {fmt}: {t['status']}"
                + (
                    f", {len(t.get('segment_keys', []))} segments, {t.get('duration_s')} s"
                    if t["status"] == "ready"
                    else ""
                )
            )
    else:
        say(f"failed: {result['input']}: {result['error']} ({_advice(exc)})")
    for warning in result.get("warnings", []):
        say(f"  warning: {warning}")


@app.command()
def sample(
    out: Path = typer.Argument(..., help="WAV file to write."),
    seconds: float = typer.Option(30.0, min=0.5, help="Length in seconds."),
    rate: int = typer.Option(48000, help="Sample rate in Hz."),
    channels: int = typer.Option(2, min=1, max=8, help="Channel count."),
    seed: int = typer.Option(0, help="Different seeds give different melodies."),
) -> None:
    """Write a music-like sample track (notes, harmonics and a beat) to try roadie with."""
    from roadie.sample_audio import write_sample  # noqa: PLC0415  (deferred: numpy, soundfile)

    write_sample(out, seconds, rate, channels, seed)
    say(f"wrote {out} ({seconds:g} s, {rate} Hz, {channels} ch)")
