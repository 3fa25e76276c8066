"""Storage keys: what a key may be (`validate_key`), how keys are built (`join_key`, `safe_filename` for an untrusted
upload's name), and the content type an object is stored with (`content_type_for`)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from roadie.errors import StorageKeyError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Unicode control, format (bidi overrides, zero-width), surrogate, private-use and line/paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def validate_key(key: str) -> str:
    """Reject keys that could escape the storage root (or an S3 prefix) or confuse a backend. Returns the key
    unchanged.

    Refused: absolute keys (`/x`, `C:x`), backslashes, `.`/`..`/empty segments (so no trailing `/`), control and
    invisible format characters, NUL, `%` (so no URL-encoded `%2e%2e` or `%2f` that a proxy or server might decode
    into a traversal), and keys that only become a traversal once Unicode-normalised (`．．／` is `../` under NFKC)."""
    if not isinstance(key, str) or not key:
        raise StorageKeyError("storage key is empty")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise StorageKeyError(f"storage key is not valid Unicode text: {key[:60]!r}") from None
    if size > 1024:
        raise StorageKeyError(f"storage key is longer than 1024 bytes: {key[:60]!r}…")
    if _CONTROL.search(key) or any(unicodedata.category(c) in _BAD_CATEGORIES for c in key):
        raise StorageKeyError(f"storage key contains a control or format character: {key!r}")
    if "%" in key:
        raise StorageKeyError(f"storage key contains '%' (URL-encoded forms are not keys): {key!r}")
    for form in dict.fromkeys((key, unicodedata.normalize("NFKC", key))):
        if form.startswith("/") or "\\" in form or re.match(r"^[A-Za-z]:", form):
            raise StorageKeyError(f"storage key must be relative: {key!r}")
        # No empty segment either: "a//b" and "a/" mean different objects to a folder and to S3.
        if any(part in ("", ".", "..") for part in form.split("/")):
            raise StorageKeyError(f"storage key has an empty, '.' or '..' segment: {key!r}")
    return key


def safe_filename(name: str, default: str = "upload") -> str:
    """A file name from an untrusted upload, reduced to characters that are safe in any key or path."""
    base = Path(name.replace("\\", "/")).name
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = _SAFE_NAME.sub("_", stem).strip("._-")[:100] or default
    ext = _SAFE_NAME.sub("", ext)[:10].lower()
    return f"{stem}.{ext}" if ext else stem


def join_key(*parts: str) -> str:
    return validate_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


_CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "audio/mp4",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".dat": "application/octet-stream",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
}


def content_type_for(name: str) -> str:
    return _CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")
