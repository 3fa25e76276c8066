"""The Storage interface every backend (a local folder, an S3 bucket) implements, and staged publishing over it.

Outputs are published through a staging area, so a failed job never leaves a partial output visible:
write under `_staging/<token>/`, then `promote` moves everything under its final prefix, or `discard` drops it.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from roadie.storage.keys import content_type_for, join_key

STAGING_ROOT = "_staging"


class Storage(Protocol):
    url: str
    bucket: str

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, keys: builtins.list[str]) -> None: ...
    def move(self, src: str, dst: str) -> None: ...
    def url_for(self, key: str) -> str: ...


def delete_prefix(storage: Storage, prefix: str) -> int:
    keys = storage.list(prefix)
    storage.delete(keys)
    return len(keys)


@dataclass
class Stage:
    """Objects written for one job, not visible under their final keys until promoted."""

    storage: Storage
    final_prefix: str
    token: str

    @property
    def prefix(self) -> str:
        return join_key(STAGING_ROOT, self.token)

    def put_file(self, relkey: str, path: Path, content_type: str | None = None) -> str:
        self.storage.put_file(join_key(self.prefix, relkey), path, content_type)
        return join_key(self.final_prefix, relkey)

    def put_bytes(self, relkey: str, data: bytes, content_type: str | None = None) -> str:
        self.storage.put_bytes(join_key(self.prefix, relkey), data, content_type)
        return join_key(self.final_prefix, relkey)

    def put_dir(self, directory: Path) -> list[str]:
        """Stage every file of a directory (flat); returns the final keys, sorted."""
        return sorted(
            self.put_file(p.name, p, content_type_for(p.name)) for p in sorted(directory.iterdir()) if p.is_file()
        )

    def promote(self, replace: bool = True) -> list[str]:
        """Move staged objects under the final prefix; with `replace`, stale objects there are removed first."""
        staged = self.storage.list(self.prefix)
        finals = [join_key(self.final_prefix, k[len(self.prefix) + 1 :]) for k in staged]
        if replace:
            stale = sorted(set(self.storage.list(self.final_prefix)) - set(finals))
            self.storage.delete(stale)
        moved: list[str] = []
        try:
            for src, dst in zip(staged, finals, strict=False):
                self.storage.move(src, dst)
                moved.append(dst)
        except BaseException:
            # Half a rendition is worse than none: take back what was moved.
            self.storage.delete(moved)
            self.discard()
            raise
        return sorted(finals)

    def discard(self) -> None:
        delete_prefix(self.storage, self.prefix)


@contextmanager
def staged(storage: Storage, final_prefix: str) -> Iterator[Stage]:
    """Stage objects; on any error they are discarded. Call `stage.promote()` to publish."""
    stage = Stage(storage, join_key(final_prefix), uuid.uuid4().hex)
    try:
        yield stage
    except BaseException:
        stage.discard()
        raise
    else:
        # Whatever was not promoted inside the block is dropped, never left behind.
        stage.discard()
