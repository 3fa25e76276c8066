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


def as_chunk(chunk: np.ndarray, channels: int) -> np.ndarray:
    """One fed chunk as frames x `channels` (1-D only for mono), or a ValueError naming the shape it had."""
    x = np.asarray(chunk)
    if x.ndim == 1 and channels == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != channels:
        raise ValueError(f"a chunk must be frames x {channels} channels, got shape {x.shape}")
    return x


class Axis:
    """A read-only int attribute: the length of one axis of an array attribute, e.g. `frames = Axis("values", 0)`
    on a class whose `values` is frames x channels."""

    def __init__(self, array: str, axis: int) -> None:
        self.array, self.axis = array, axis

    def __get__(self, obj: object, owner: type | None = None) -> int:
        return int(getattr(obj, self.array).shape[self.axis])
