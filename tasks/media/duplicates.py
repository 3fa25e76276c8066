"""Duplicate detection: the catalogue's index narrows the candidates, the fingerprints' bit errors (numpy) decide."""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy.orm import Session

from roadie.catalog import results
from tasks.media.fingerprint import Fingerprint
from tasks.media.fingerprint_match import (
    DUPLICATE_THRESHOLD,
    MAX_CANDIDATES,
    MIN_INDEX_HITS,
    DuplicateMatch,
    index_keys,
    match_score,
)


def find_duplicates(
    session: Session,
    version_id: str | uuid.UUID,
    fp: Fingerprint,
    threshold: float = DUPLICATE_THRESHOLD,
    *,
    limit: int = MAX_CANDIDATES,
) -> list[DuplicateMatch]:
    """Versions of other tracks whose audio matches `fp` with a score of at least `threshold`, best first."""
    candidates = results.find_candidates(session, version_id, index_keys(fp), min_hits=MIN_INDEX_HITS, limit=limit)
    if not candidates:
        return []
    stored = results.stored_fingerprints(session, [v for v, _, _ in candidates])
    mine = fp.array()
    matches = []
    for candidate_id, track_id, _hits in candidates:
        items = stored.get(candidate_id)
        if not items:
            continue
        match = match_score(mine, np.asarray(items, dtype=np.uint32))
        if match.score >= threshold:
            matches.append(
                DuplicateMatch(candidate_id, track_id, round(match.score, 4), round(match.ber, 4), match.offset)
            )
    return sorted(matches, key=lambda m: (-m.score, m.version_id))
