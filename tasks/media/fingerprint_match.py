"""Near-duplicate search over Chromaprint fingerprints (made by `tasks.media.fingerprint`).

Two fingerprints are compared AcoustID-style, by the bit error rate of their items at the best alignment, and
candidates come from an index of item values (`index_keys`), so a new upload is never scored against the whole
catalogue. Scoring the candidates is tasks.media.duplicates'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.media.fingerprint import ITEM_SECONDS, Fingerprint

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


# ---------------------------------------------------------------- comparing fingerprints


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
    bits = np.where(valid, np.bitwise_count(xored), 0).sum(axis=1)
    return bits, valid.sum(axis=1)


def match_score(
    a: Fingerprint | Sequence[int] | np.ndarray,
    b: Fingerprint | Sequence[int] | np.ndarray,
    max_offset: int = MAX_OFFSET_ITEMS,
) -> Match:
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
