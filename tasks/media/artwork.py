"""Cover art: the picture embedded in the upload (MP3 APIC, FLAC PICTURE, M4A covr), a 200x200 centre-cropped
thumbnail, and a bundled default when the upload has none.

ffmpeg copies the attached picture out as it is (an argument list, never a shell); Pillow checks it is a real
image and makes the thumbnail. No ImageMagick anywhere.
"""

from __future__ import annotations

import io
import uuid
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from roadie.catalog.results import Artwork
from roadie.errors import RoadieError
from tasks.media import ffmpeg

THUMBNAIL_SIZE = (200, 200)
THUMBNAIL_QUALITY = 88
MAX_PIXELS = 40_000_000  # beyond this a "cover" is a decompression bomb, not artwork
# A package resource (importlib.resources), so it loads wherever roadie is installed: a checkout, a wheel, a zip.
DEFAULT_ARTWORK = resources.files("roadie") / "assets" / "default-artwork.png"
DEFAULT_ARTWORK_SIZE = 600
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}  # stored as uploaded; anything else is re-encoded as PNG


class ArtworkError(RoadieError):
    """Cover art could not be used. Not transient, and not fatal for an ingest: it falls back to the default."""


class BrokenArtwork(ArtworkError):
    """The upload has an embedded picture, but it is not a readable image (corrupt, truncated, not an image)."""


# ---------------------------------------------------------------- extracting


def has_embedded_cover(src: Path) -> bool:
    return ffmpeg.probe(Path(src)).has_cover


def extract_cover(src: Path, workdir: Path, *, has_cover: bool | None = None) -> bytes | None:
    """The embedded picture's bytes exactly as stored, or None when there is none. `has_cover` (from an earlier
    probe) saves probing again. A picture ffmpeg cannot copy out raises BrokenArtwork."""
    src = Path(src)
    if has_cover is None:
        has_cover = has_embedded_cover(src)
    if not has_cover:
        return None
    # image2 writes each packet's bytes verbatim, so a PNG cover lands intact despite the .jpg name.
    dst = Path(workdir) / f"cover-{uuid.uuid4().hex}.jpg"
    try:
        ffmpeg.run(ffmpeg.build_extract_cover_cmd(src, dst), timeout_s=60)
        data = dst.read_bytes() if dst.exists() else b""
    except ffmpeg.FFmpegError as exc:
        if exc.returncode == 127:
            raise
        raise BrokenArtwork(f"the embedded cover art could not be extracted ({exc})") from None
    finally:
        dst.unlink(missing_ok=True)
    if not data:
        raise BrokenArtwork("the embedded cover art is empty")
    return data


# ---------------------------------------------------------------- images


def _open_checked(data: bytes) -> Image.Image:
    """Decode fully (verify() alone misses truncated pixel data) and refuse decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise BrokenArtwork(
                    f"the cover art is {image.width}x{image.height} pixels, over the {MAX_PIXELS // 1_000_000} MP limit"
                )
            image.load()
    except BrokenArtwork:
        raise
    except UnidentifiedImageError:
        raise BrokenArtwork("the embedded cover art is not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BrokenArtwork(f"the embedded cover art is too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's truncated/corrupt-data errors
        raise BrokenArtwork(f"the embedded cover art is corrupt ({exc})") from None
    if image.width < 1 or image.height < 1:
        raise BrokenArtwork("the embedded cover art has no pixels")
    return image


def _rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (a thumbnail is a JPEG) and normalise CMYK, palette and grey images."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        ground = Image.new("RGB", rgba.size, (255, 255, 255))
        ground.paste(rgba, mask=rgba.getchannel("A"))
        return ground
    return image.convert("RGB") if image.mode != "RGB" else image


def make_thumbnail(image: Image.Image, size: tuple[int, int] = THUMBNAIL_SIZE) -> bytes:
    """A centre crop to the target's aspect ratio, scaled with Lanczos, as a JPEG."""
    thumb = ImageOps.fit(_rgb(image), size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def artwork_from_bytes(data: bytes, *, embedded: bool = True) -> Artwork:
    """Check the picture, keep it as it is when it is JPEG or PNG (else re-encode it as PNG), make the thumbnail."""
    image = _open_checked(data)
    extension = _KEPT_FORMATS.get(image.format or "")
    full = data
    if extension is None:
        buffer = io.BytesIO()
        (image if image.mode in ("RGB", "RGBA", "L", "LA", "P") else image.convert("RGB")).save(buffer, format="PNG")
        full, extension = buffer.getvalue(), "png"
    return Artwork(full, extension, image.width, image.height, make_thumbnail(image), embedded)


def draw_default_artwork(size: int = DEFAULT_ARTWORK_SIZE) -> bytes:
    """The default cover: a dusk gradient, a record's grooves and a small waveform. Deterministic."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    t = (0.65 * y + 0.35 * x)[..., None]
    top, bottom = np.array([38, 32, 84]), np.array([22, 128, 142])  # indigo to teal
    pixels = (top * (1 - t) + bottom * t).round().astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image, "RGBA")
    centre = size / 2
    for radius in np.linspace(0.44, 0.16, 9) * size:  # grooves
        draw.ellipse(
            [centre - radius, centre - radius, centre + radius, centre + radius],
            outline=(255, 255, 255, 38),
            width=max(1, size // 200),
        )
    label = 0.12 * size
    draw.ellipse([centre - label, centre - label, centre + label, centre + label], fill=(255, 255, 255, 230))
    heights = [0.25, 0.5, 0.8, 0.55, 1.0, 0.6, 0.85, 0.45, 0.3]
    span = 1.3 * label  # the bars sit inside the label, centred
    bar_w = span / (len(heights) * 1.6 - 0.6)
    for i, h in enumerate(heights):
        left = centre - span / 2 + i * bar_w * 1.6
        half = h * label * 0.55
        draw.rounded_rectangle(
            [left, centre - half, left + bar_w, centre + half], radius=bar_w / 2, fill=(38, 32, 84, 255)
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def default_artwork() -> Artwork:
    """The bundled default (roadie/assets/default-artwork.png). A missing resource is a packaging fault and
    raises, rather than being drawn afresh where nobody would notice."""
    return artwork_from_bytes(DEFAULT_ARTWORK.read_bytes(), embedded=False)


def load_artwork(src: Path, workdir: Path, *, has_cover: bool | None = None) -> Artwork:
    """The upload's cover art, or the default when it has none. Broken cover art raises BrokenArtwork."""
    data = extract_cover(src, workdir, has_cover=has_cover)
    if data is None:
        return default_artwork()
    return artwork_from_bytes(data, embedded=True)


def artwork_or_default(src: Path, workdir: Path, *, has_cover: bool | None = None) -> Artwork:
    """Like load_artwork, but broken cover art degrades to the default with a warning (for the ingest)."""
    try:
        return load_artwork(src, workdir, has_cover=has_cover)
    except ArtworkError as exc:
        fallback = default_artwork()
        return Artwork(
            fallback.full,
            fallback.full_extension,
            fallback.width,
            fallback.height,
            fallback.thumbnail,
            False,
            (f"cover art ignored, default used: {exc}",),
        )


if __name__ == "__main__":  # python -m tasks.media.artwork: (re)draw the bundled default, in a checkout
    target = Path(str(DEFAULT_ARTWORK))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(draw_default_artwork())
    print(target)
