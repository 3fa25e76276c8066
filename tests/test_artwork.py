"""Cover art: extracted from MP3/FLAC/M4A with ffmpeg, a 200x200 centre-cropped thumbnail, the bundled default,
broken covers degrading to it, and both images stored with the track pointing at them."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from roadie.catalog import results
from tasks.media import artwork
from tasks.media.artwork import BrokenArtwork
from tasks.media.ffmpeg import ffmpeg_binary
from tests.support import music_like, new_version, write_wav

RED, GREEN, BLUE = (220, 0, 0), (0, 200, 0), (0, 0, 220)


def striped_cover(path: Path, fmt: str = "JPEG", size: tuple[int, int] = (400, 200)) -> bytes:
    """Red | green | blue, the green middle half exactly the square a centre crop keeps."""
    w, h = size
    image = Image.new("RGB", size, GREEN)
    image.paste(RED, (0, 0, w // 4, h))
    image.paste(BLUE, (w - w // 4, 0, w, h))
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path.read_bytes()


def with_cover(tmp_path: Path, container: str, cover: Path) -> Path:
    audio = write_wav(tmp_path / "a.wav", music_like(1.5, 44100, 2, seed=1), 44100)
    codec = {"mp3": ["-c:a", "libmp3lame", "-id3v2_version", "3"], "flac": ["-c:a", "flac"], "m4a": ["-c:a", "aac"]}[
        container
    ]
    out = tmp_path / f"with-cover.{container}"
    subprocess.run(
        [
            ffmpeg_binary(),
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-i",
            str(audio),
            "-i",
            str(cover),
            "-map",
            "0:a",
            "-map",
            "1",
            *codec,
            "-c:v",
            "copy",
            "-disposition:v",
            "attached_pic",
            str(out),
        ],
        check=True,
    )
    return out


def colour_at(jpeg: bytes, xy: tuple[int, int]) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(jpeg)).convert("RGB").getpixel(xy)


def close(a, b, tolerance: int = 40) -> bool:
    return all(abs(int(x) - int(y)) <= tolerance for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize("container", ["mp3", "flac", "m4a"])
def test_embedded_cover_is_extracted_unchanged(tmp_path: Path, container: str):
    original = striped_cover(tmp_path / "cover.jpg")
    art = artwork.load_artwork(with_cover(tmp_path, container, tmp_path / "cover.jpg"), tmp_path)
    assert art.embedded and art.full == original and art.full_extension == "jpg"
    assert (art.width, art.height) == (400, 200)
    thumb = Image.open(io.BytesIO(art.thumbnail))
    assert thumb.format == "JPEG" and thumb.size == (200, 200)
    for corner in [(2, 2), (197, 2), (2, 197), (197, 197), (100, 100)]:
        assert close(colour_at(art.thumbnail, corner), GREEN), corner  # only the centre square is kept
    assert not list(tmp_path.glob("cover-*.jpg"))  # the extracted temp file is gone


def test_png_cover_is_kept_as_png(tmp_path: Path):
    original = striped_cover(tmp_path / "cover.png", "PNG", size=(200, 500))
    art = artwork.load_artwork(with_cover(tmp_path, "flac", tmp_path / "cover.png"), tmp_path)
    assert art.full == original and art.full_extension == "png" and art.full_name == "cover.png"
    assert close(colour_at(art.thumbnail, (100, 100)), GREEN)


def test_thumbnail_of_transparent_and_odd_images():
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((0, 0, 200, 255), (100, 100, 200, 200))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    art = artwork.artwork_from_bytes(buffer.getvalue())
    assert close(colour_at(art.thumbnail, (5, 5)), (255, 255, 255), 5)  # transparency on white
    assert close(colour_at(art.thumbnail, (100, 100)), (0, 0, 200))
    for mode, size in [("L", (50, 80)), ("CMYK", (640, 480)), ("P", (1, 1))]:
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, "JPEG" if mode == "CMYK" else "PNG")
        assert Image.open(io.BytesIO(artwork.artwork_from_bytes(buffer.getvalue()).thumbnail)).size == (200, 200)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buffer, "GIF")
    gif = artwork.artwork_from_bytes(buffer.getvalue())
    assert gif.full_extension == "png" and Image.open(io.BytesIO(gif.full)).format == "PNG"


def test_no_cover_gives_the_bundled_default(tmp_path: Path):
    audio = write_wav(tmp_path / "plain.wav", music_like(1.0, 44100, 2), 44100)
    assert artwork.extract_cover(audio, tmp_path) is None
    art = artwork.load_artwork(audio, tmp_path)
    assert not art.embedded and art.full == artwork.DEFAULT_ARTWORK.read_bytes()
    assert Image.open(io.BytesIO(art.thumbnail)).size == (200, 200)


def test_bundled_default_is_the_drawn_one():
    """The committed file is what draw_default_artwork makes (pixels, not bytes: zlib may differ)."""
    bundled = np.asarray(Image.open(artwork.DEFAULT_ARTWORK).convert("RGB"))
    drawn = np.asarray(Image.open(io.BytesIO(artwork.draw_default_artwork())).convert("RGB"))
    assert bundled.shape == (600, 600, 3)
    np.testing.assert_array_equal(bundled, drawn)
    assert len(np.unique(bundled.reshape(-1, 3), axis=0)) > 100  # a picture, not a flat colour


def corrupted(tmp_path: Path, how: str) -> Path:
    cover = striped_cover(tmp_path / "cover.jpg")
    song = with_cover(tmp_path, "mp3", tmp_path / "cover.jpg")
    data = bytearray(song.read_bytes())
    at = data.find(cover[:64])
    assert at > 0
    if how == "zeroed":
        data[at + 2 : at + len(cover)] = bytes(len(cover) - 2)
    else:  # the scan data cut off: a truncated JPEG
        data[at + len(cover) // 2 : at + len(cover)] = bytes(len(cover) - len(cover) // 2)
    song.write_bytes(bytes(data))
    return song


@pytest.mark.parametrize("how", ["zeroed", "truncated"])
def test_broken_cover_is_a_typed_error_and_degrades_to_the_default(tmp_path: Path, how: str):
    song = corrupted(tmp_path, how)
    with pytest.raises(BrokenArtwork) as caught:
        artwork.load_artwork(song, tmp_path)
    assert "cover art" in str(caught.value) and "BytesIO" not in str(caught.value)
    art = artwork.artwork_or_default(song, tmp_path)
    assert not art.embedded and art.full == artwork.default_artwork().full
    assert len(art.warnings) == 1 and "default used" in art.warnings[0]


def test_hostile_names_and_bombs(tmp_path: Path):
    striped_cover(tmp_path / "cover.jpg")
    song = with_cover(tmp_path, "mp3", tmp_path / "cover.jpg")
    hostile = song.rename(tmp_path / "$(touch pwned); 'x' \"y\" ♫.mp3")
    assert artwork.load_artwork(hostile, tmp_path).embedded
    assert not (tmp_path / "pwned").exists()
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, "PNG")  # 64 MP in a few kB
    with pytest.raises(BrokenArtwork, match="MP"):
        artwork.artwork_from_bytes(buffer.getvalue())
    with pytest.raises(BrokenArtwork):
        artwork.artwork_from_bytes(b"")


# ---------------------------------------------------------------- storing


def test_save_artwork_stores_both_and_points_the_track_at_them(roadie_env, pg: Session, tmp_path: Path):
    from roadie.db.models import Asset, Track
    from roadie.storage import STAGING_ROOT, get_storage

    storage = get_storage()
    version = new_version(pg)
    version_id, track_id = version.id, version.track_id
    striped_cover(tmp_path / "cover.jpg")
    art = artwork.load_artwork(with_cover(tmp_path, "m4a", tmp_path / "cover.jpg"), tmp_path)
    keys = results.save_artwork(pg, storage, str(version_id), art)
    assert keys.as_dict() == {
        "full_key": f"tracks/{track_id}/artwork/cover.jpg",
        "thumbnail_key": f"tracks/{track_id}/artwork/cover-200.jpg",
        "embedded": True,
    }
    assert storage.get_bytes(keys.full_key) == art.full
    assert storage.get_bytes(keys.thumbnail_key) == art.thumbnail
    track = pg.get(Track, track_id)
    full, thumb = pg.get(Asset, track.artwork_asset_id), pg.get(Asset, track.artwork_thumb_asset_id)
    assert (full.key, full.size_bytes, full.content_type) == (keys.full_key, len(art.full), "image/jpeg")
    assert (thumb.key, thumb.size_bytes) == (keys.thumbnail_key, len(art.thumbnail))

    # A rerun with the default instead: objects replaced, no stale cover left, no duplicate asset rows.
    default = artwork.default_artwork()
    again = results.save_artwork(pg, storage, str(version_id), default)
    assert again.full_key.endswith("cover.png") and not again.embedded
    assert storage.list(f"tracks/{track_id}/artwork") == sorted([again.full_key, again.thumbnail_key])
    assert again.thumbnail_asset_id == keys.thumbnail_asset_id  # same key, same row
    assert pg.get(Track, track_id).artwork_asset_id == uuid.UUID(again.full_asset_id)
    count = pg.scalar(select(func.count()).select_from(Asset).where(Asset.key.like(f"tracks/{track_id}/%")))
    assert count == 3  # cover.jpg (no longer pointed at), cover.png, cover-200.jpg
    assert not storage.list(STAGING_ROOT)


def test_save_artwork_for_a_missing_version(roadie_env, pg: Session):
    from roadie.errors import InvalidInput
    from roadie.storage import get_storage

    with pytest.raises(InvalidInput):
        results.save_artwork(pg, get_storage(), str(uuid.uuid4()), artwork.default_artwork())
