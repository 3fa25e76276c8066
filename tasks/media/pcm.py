"""The one shape decoded audio has everywhere in roadie: frames x channels (a 1-D array is mono)."""
from __future__ import annotations

import numpy as np


def as_frames(samples: np.ndarray) -> np.ndarray:
    """A frames x channels view of the input, never a copy (callers convert a slice at a time)."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"samples must be frames x channels, got shape {x.shape}")
    return x
