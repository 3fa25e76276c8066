"""The whole-track PNG drawn from per-column int16 minima and maxima (`Waveform.to_png`, or the envelope that
`tasks.media.waveform_builder` keeps): one band per channel, a calm blue wave on a near-white ground."""

from __future__ import annotations

import io

import numpy as np

from roadie.errors import InvalidInput

INT16_MAX = 32767  # the waveform's int16 full scale sits at the top of a band

# The PNG palette: a calm blue wave on a near-white ground, with a faint centre line.
BACKGROUND = (250, 250, 252)
WAVE = (46, 110, 190)
AXIS = (200, 205, 215)


def render_png(mins: np.ndarray, maxs: np.ndarray, width: int = 1800, height: int = 280) -> bytes:
    """The waveform's minima and maxima (length x channels, int16) stretched over the whole image, one band per
    channel. Make the waveform with `fit_samples_per_pixel(frames, width)` so each column is one pixel of data."""
    from PIL import Image  # noqa: PLC0415 - Pillow (~10 ms) only for a PNG; `roadie analyze` draws none

    if width < 1 or height < 2:
        raise InvalidInput("the image must be at least 1 x 2 pixels")
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    length, channels = mins.shape
    if length:
        columns = np.minimum(np.arange(width) * length // width, length - 1)
        bands = _band_edges(height, channels)
        for channel, (top, bottom) in enumerate(bands):
            band_height = bottom - top
            centre = top + (band_height - 1) / 2
            image[round(centre), :] = AXIS
            scale = (band_height - 1) / 65535.0
            upper = np.floor(top + (INT16_MAX - maxs[columns, channel].astype(np.float64)) * scale)
            lower = np.ceil(top + (INT16_MAX - mins[columns, channel].astype(np.float64)) * scale)
            rows = np.arange(top, bottom)[:, None]
            mask = (rows >= upper[None, :]) & (rows <= lower[None, :])
            image[top:bottom][mask] = WAVE
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _band_edges(height: int, channels: int) -> list[tuple[int, int]]:
    edges = [round(i * height / channels) for i in range(channels + 1)]
    return [(edges[i], edges[i + 1]) for i in range(channels) if edges[i + 1] - edges[i] >= 2] or [(0, height)]
