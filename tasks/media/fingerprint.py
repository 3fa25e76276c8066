"""Chromaprint fingerprints and near-duplicate search.

An exact hash of a fingerprint misses every re-encode (the original design's bug). Here two fingerprints are
compared AcoustID-style, by the bit error rate of their items at the best alignment, and candidates come from an
index of item values (`fingerprint_index`), so a new upload is never scored against the whole catalogue.
Prefect tasks live in `tasks.media.fingerprint_tasks`, so this module imports fast.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from roadie.errors import RoadieError

# Chromaprint's default algorithm: 4096-sample frames at 11025 Hz, hopping a third of a frame.
ITEM_SECONDS = 4096 / 3 / 11025
# AcoustID fingerprints the first 120 s; so do we, which bounds the stored items (~970) and the scoring cost.
FINGERPRINT_SECONDS = 120
# The item Chromaprint emits for digital silence: it would match every track with a quiet intro.
SILENCE_ITEM = 627964279
# AcoustID's offset histogram keys on the top 14 bits of each item.
HISTOGRAM_BITS = 14
# Alignments tried exhaustively: +-10 s covers a copy trimmed by up to 10 s at either end.
MAX_OFFSET_ITEMS = math.ceil(10 / ITEM_SECONDS)  # 81
# Farther offsets are tried only where the histogram of matching top bits peaks (an excerpt from mid-track).
HISTOGRAM_PEAKS = 3
# Index: the top 20 bits of an item survive a re-encode far more often than all 32; only a quarter of the
# distinct values are indexed, chosen by value (not position), so a trimmed copy selects the same ones.
INDEX_SHIFT = 12
INDEX_SAMPLING = 4
# Scores (overlap/shorter x (1 - 2 BER)): re-encodes score > 0.8, unrelated music < 0.25 (see tests).
DUPLICATE_THRESHOLD = 0.5
MIN_INDEX_HITS = 3
MAX_CANDIDATES = 25
FPCALC_TIMEOUT_S = 300


class FingerprintError(RoadieError):
    """No fingerprint could be made. Not transient; the ingest records a warning and carries on."""


class FpcalcNotFound(FingerprintError):
    """The fpcalc binary (libchromaprint-tools) is not installed or not where ROADIE_FPCALC_BINARY says."""


class FpcalcFailed(FingerprintError):
    def __init__(self, message: str, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr
        super().__init__(message)


@dataclass(frozen=True)
class Fingerprint:
    items: tuple[int, ...]  # raw Chromaprint items, uint32
    duration_s: float
    # fpcalc's non-fatal complaints (a decode error after which it still produced a fingerprint).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sha256(self) -> str:
        """Of the little-endian uint32 items: equal only for bit-identical fingerprints."""
        return hashlib.sha256(self.array().astype("<u4").tobytes()).hexdigest()

    def array(self) -> np.ndarray:
        return np.asarray(self.items, dtype=np.uint32)


@dataclass(frozen=True)
class Match:
    score: float  # overlap / shorter length x (1 - 2 BER), 0..1
    ber: float  # bit error rate over the overlap at the best offset
    offset: int  # a[i] lines up with b[i + offset]
    overlap: int  # items compared

    @property
    def offset_s(self) -> float:
        return self.offset * ITEM_SECONDS


@dataclass(frozen=True)
class DuplicateMatch:
    version_id: str
    track_id: str
    score: float
    ber: float
    offset: int  # items: the new version's start lines up with this position in the matched one

    @property
    def offset_s(self) -> float:
        return round(self.offset * ITEM_SECONDS, 2)

    def as_dict(self) -> dict[str, object]:
        """What the CLI and the flows report."""
        return {"version_id": self.version_id, "score": self.score, "offset_s": self.offset_s}


# ---------------------------------------------------------------- making fingerprints


def fpcalc_binary(fpcalc: str | None = None) -> str:
    from roadie.settings import get_settings

    name = fpcalc or get_settings().fpcalc_binary
    found = shutil.which(name)
    if not found:
        raise FpcalcNotFound(f"fpcalc not found ({name!r}); install libchromaprint-tools or set ROADIE_FPCALC_BINARY")
    return found


def parse_fpcalc_json(stdout: str, returncode: int, stderr: str) -> Fingerprint:
    """fpcalc prints a good fingerprint and still exits 3 when decoding ends with an error, which ffmpeg-made
    WAVs do at their end ("Error decoding audio frame (End of file)"). So: exit 0 or 3 with items is a fingerprint
    (other decode errors kept as warnings); anything else, or no items, is a failure."""
    errors = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    reason = errors[-1] if errors else f"exit code {returncode}"
    if returncode not in (0, 3):
        raise FpcalcFailed(f"fpcalc failed: {reason}", returncode, stderr)
    try:
        data = json.loads(stdout)
        items = tuple(int(v) for v in data["fingerprint"])
        duration = float(data.get("duration") or 0.0)
    except (ValueError, KeyError, TypeError) as exc:
        raise FpcalcFailed(f"fpcalc printed no fingerprint ({reason}): {stdout[:200]!r}", returncode, stderr) from exc
    if not items:
        raise FpcalcFailed(f"fpcalc printed an empty fingerprint ({reason})", returncode, stderr)
    if any(v < 0 or v > 0xFFFFFFFF for v in items):
        raise FpcalcFailed("fpcalc items are not uint32 (was -signed passed?)", returncode, stderr)
    unexpected = tuple(e for e in errors if "(End of file)" not in e)
    return Fingerprint(items, duration, unexpected)


def _run_fpcalc(cmd: list[str], stdin: bytes | None = None) -> Fingerprint:
    try:
        out = subprocess.run(cmd, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                             capture_output=True, timeout=FPCALC_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise FpcalcNotFound(f"fpcalc not found ({cmd[0]!r})") from exc
    except subprocess.TimeoutExpired as exc:
        raise FpcalcFailed(f"fpcalc took longer than {FPCALC_TIMEOUT_S} s", -1, "") from exc
    return parse_fpcalc_json(out.stdout.decode("utf-8", "replace"), out.returncode,
                             out.stderr.decode("utf-8", "replace"))


def fingerprint_file(path: Path, fpcalc: str | None = None) -> Fingerprint:
    """Fingerprint a file with fpcalc. The absolute path starts with "/", so fpcalc (and the libavformat under it)
    cannot take a file name for an option or a protocol."""
    binary = fpcalc_binary(fpcalc)
    src = Path(path).resolve()
    if not src.is_file():
        raise FpcalcFailed(f"{path} is not a file", 2, "")
    cmd = [binary, "-raw", "-json", "-length", str(FINGERPRINT_SECONDS), str(src)]
    return _run_fpcalc(cmd)


def pcm_to_s16_mono(samples: np.ndarray, sample_rate: int, seconds: float = FINGERPRINT_SECONDS) -> bytes:
    """The first `seconds` as mono 16-bit little-endian. Chromaprint averages the channels to mono anyway, so
    downmixing here halves what goes through the pipe without changing the fingerprint's input."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    x = x[: int(seconds * sample_rate)]
    # Column by column, in place: a generic mean over axis 1 is ten times slower on frames x channels.
    mono = np.array(x[:, 0], dtype=np.float32)
    for channel in range(1, x.shape[1]):
        mono += x[:, channel]
    mono *= 32767.0 / x.shape[1]
    np.rint(mono, out=mono)
    np.clip(mono, -32768, 32767, out=mono)
    return mono.astype("<i2").tobytes()


def fingerprint_pcm(samples: np.ndarray, sample_rate: int, fpcalc: str | None = None) -> Fingerprint:
    """Fingerprint already-decoded PCM (frames x channels, floats in [-1, 1]) by piping it to fpcalc's stdin:
    no second decode of the original, no temp file to leak. The duration is the signal's own."""
    x = np.asarray(samples)
    frames = x.shape[0]
    cmd = [fpcalc_binary(fpcalc), "-raw", "-json", "-length", str(FINGERPRINT_SECONDS),
           "-format", "s16le", "-rate", str(int(sample_rate)), "-channels", "1", "-"]
    fp = _run_fpcalc(cmd, stdin=pcm_to_s16_mono(x, sample_rate))
    return Fingerprint(fp.items, frames / sample_rate, fp.warnings)


# ---------------------------------------------------------------- comparing fingerprints


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    table = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)
    return table[values & 0xFFFF] + table[values >> 16]


def _as_items(fp: Fingerprint | Sequence[int] | np.ndarray) -> np.ndarray:
    return fp.array() if isinstance(fp, Fingerprint) else np.asarray(fp, dtype=np.uint32)


def _histogram_offsets(a: np.ndarray, b: np.ndarray, peaks: int) -> np.ndarray:
    """Offsets at which many items share their top bits, like pg_acoustid's match_fingerprints2."""
    shift = 32 - HISTOGRAM_BITS
    where_a = np.full(1 << HISTOGRAM_BITS, -1, dtype=np.int64)
    where_b = np.full(1 << HISTOGRAM_BITS, -1, dtype=np.int64)
    where_a[a >> shift] = np.arange(len(a))
    where_b[b >> shift] = np.arange(len(b))
    both = (where_a >= 0) & (where_b >= 0)
    if not both.any():
        return np.zeros(0, dtype=np.int64)
    offsets = where_b[both] - where_a[both]
    counts = np.bincount(offsets + len(a), minlength=len(a) + len(b))
    top = np.argsort(counts)[::-1][:peaks]
    return top[counts[top] > 1] - len(a)


def offset_bit_errors(a: np.ndarray, b: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Differing bits and compared items for each offset (a[i] against b[i + offset]), all offsets at once."""
    i = np.arange(len(a))
    j = i[None, :] + offsets[:, None]
    valid = (j >= 0) & (j < len(b))
    xored = a[None, :] ^ b[np.clip(j, 0, len(b) - 1)]
    bits = np.where(valid, _popcount(xored), 0).sum(axis=1)
    return bits, valid.sum(axis=1)


def match_score(a: Fingerprint | Sequence[int] | np.ndarray, b: Fingerprint | Sequence[int] | np.ndarray,
                max_offset: int = MAX_OFFSET_ITEMS) -> Match:
    """Best alignment of two fingerprints by bit error rate: every offset within +-max_offset items, plus the
    peaks of the top-bits offset histogram beyond it. Score = overlap / shorter x (1 - 2 BER), as AcoustID.
    Unrelated audio has BER 0.35-0.5 at every offset; a re-encode of the same audio stays under about 0.1."""
    ia, ib = _as_items(a), _as_items(b)
    if len(ia) == 0 or len(ib) == 0:
        return Match(0.0, 0.5, 0, 0)
    near = np.arange(-max_offset, max_offset + 1)
    offsets = np.unique(np.concatenate([near, _histogram_offsets(ia, ib, HISTOGRAM_PEAKS)]))
    bits, overlap = offset_bit_errors(ia, ib, offsets)
    usable = overlap > 0
    offsets, bits, overlap = offsets[usable], bits[usable], overlap[usable]
    ber = bits / (32.0 * overlap)
    scores = np.clip(overlap / min(len(ia), len(ib)) * (1 - 2 * ber), 0.0, 1.0)
    best = int(np.argmax(scores))
    return Match(float(scores[best]), float(ber[best]), int(offsets[best]), int(overlap[best]))


# ---------------------------------------------------------------- the index and the database


def index_keys(fp: Fingerprint | Sequence[int] | np.ndarray) -> list[int]:
    """The masked item values a version is indexed under: top 20 bits, silence left out, one value in four
    (picked by a hash of the value, so the same values are picked in every copy of the audio)."""
    items = _as_items(fp)
    items = items[items != SILENCE_ITEM]
    keys = np.unique(items >> INDEX_SHIFT).astype(np.uint64)
    picked = ((keys * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)) % np.uint64(INDEX_SAMPLING) == 0
    return [int(k) for k in keys[picked]]


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    from roadie.errors import InvalidInput

    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"track version id {value!r} is not a UUID") from None


def store_fingerprint(session, version_id: str | uuid.UUID, fp: Fingerprint) -> None:
    """Write the fingerprint (raw items too) and its index rows. A rerun replaces both."""
    from sqlalchemy import delete, insert, select

    from roadie.db.models import AudioFingerprint, FingerprintIndex

    vid = _uuid(version_id)
    row = session.scalar(select(AudioFingerprint).where(AudioFingerprint.track_version_id == vid))
    if row is None:
        row = AudioFingerprint(track_version_id=vid)
        session.add(row)
    row.fingerprint_hash = fp.sha256
    row.chromaprint_data = list(fp.items)
    row.item_count = len(fp.items)
    row.duration_s = float(fp.duration_s)
    session.execute(delete(FingerprintIndex).where(FingerprintIndex.track_version_id == vid))
    keys = index_keys(fp)
    if keys:
        session.execute(insert(FingerprintIndex), [{"key": k, "track_version_id": vid} for k in keys])
    session.flush()


def find_candidates(session, version_id: str | uuid.UUID, keys: Iterable[int], *, min_hits: int = MIN_INDEX_HITS,
                    limit: int = MAX_CANDIDATES) -> list[tuple[str, str, int]]:
    """Versions of other tracks sharing the most index keys: (version_id, track_id, hits), most hits first.
    One grouped query over the posting lists; nothing is scanned per track."""
    from sqlalchemy import bindparam, func, select

    from roadie.db.models import FingerprintIndex, TrackVersion
    from roadie.errors import InvalidInput

    vid = _uuid(version_id)
    track_id = session.scalar(select(TrackVersion.track_id).where(TrackVersion.id == vid))
    if track_id is None:
        raise InvalidInput(f"track version {version_id} does not exist")
    key_list = sorted(set(int(k) for k in keys))
    if not key_list:
        return []
    hits = func.count().label("hits")
    query = (
        select(FingerprintIndex.track_version_id, TrackVersion.track_id, hits)
        .join(TrackVersion, TrackVersion.id == FingerprintIndex.track_version_id)
        .where(FingerprintIndex.key.in_(bindparam("keys", expanding=True)),
               FingerprintIndex.track_version_id != vid,
               TrackVersion.track_id != track_id)
        .group_by(FingerprintIndex.track_version_id, TrackVersion.track_id)
        .having(func.count() >= min_hits)
        .order_by(hits.desc(), FingerprintIndex.track_version_id)
        .limit(limit)
    )
    rows = session.execute(query, {"keys": key_list}).all()
    return [(str(v), str(t), int(h)) for v, t, h in rows]


def find_duplicates(session, version_id: str | uuid.UUID, fp: Fingerprint, threshold: float = DUPLICATE_THRESHOLD,
                    *, limit: int = MAX_CANDIDATES) -> list[DuplicateMatch]:
    """Versions of other tracks whose audio matches `fp` with a score of at least `threshold`, best first."""
    from sqlalchemy import select

    from roadie.db.models import AudioFingerprint

    candidates = find_candidates(session, version_id, index_keys(fp), limit=limit)
    if not candidates:
        return []
    stored = dict(session.execute(
        select(AudioFingerprint.track_version_id, AudioFingerprint.chromaprint_data)
        .where(AudioFingerprint.track_version_id.in_([uuid.UUID(v) for v, _, _ in candidates]))
    ).all())
    mine = fp.array()
    matches = []
    for candidate_id, track_id, _hits in candidates:
        items = stored.get(uuid.UUID(candidate_id))
        if not items:
            continue
        match = match_score(mine, np.asarray(items, dtype=np.uint32))
        if match.score >= threshold:
            matches.append(DuplicateMatch(candidate_id, track_id, round(match.score, 4), round(match.ber, 4),
                                          match.offset))
    return sorted(matches, key=lambda m: (-m.score, m.version_id))


def _description_prefix(matched_version_id: str) -> str:
    return f"duplicate of track version {matched_version_id} "


def describe_duplicate(match: DuplicateMatch) -> str:
    return (f"{_description_prefix(match.version_id)}(track {match.track_id}): score {match.score:.2f}, "
            f"bit error rate {match.ber:.3f}, offset {match.offset_s:+.1f} s")


def report_duplicates(session, version_id: str | uuid.UUID, matches: Sequence[DuplicateMatch]) -> list[str]:
    """One `reports` row per matched version, for moderators. Idempotent: a rerun updates the description of an
    existing report (keeping its status), and removes still-pending reports of matches that are gone."""
    from sqlalchemy import select

    from roadie.db.models import Report

    vid = _uuid(version_id)
    existing = list(session.scalars(select(Report).where(
        Report.target_type == "track_version", Report.target_id == vid, Report.reason == "duplicate")))
    ids: list[str] = []
    kept: set[uuid.UUID] = set()
    for match in matches:
        prefix = _description_prefix(match.version_id)
        report = next((r for r in existing if (r.description or "").startswith(prefix)), None)
        if report is None:
            report = Report(target_type="track_version", target_id=vid, reason="duplicate", status="pending")
            session.add(report)
        report.description = describe_duplicate(match)
        session.flush()
        kept.add(report.id)
        ids.append(str(report.id))
    for report in existing:
        if report.id not in kept and report.status == "pending":
            session.delete(report)
    session.flush()
    return ids
