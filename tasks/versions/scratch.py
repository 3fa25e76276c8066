"""A run's private working folder, and the sweep of folders whose run was killed."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from roadie.settings import get_settings

OWNER_LOCK = ".owner"


@contextmanager
def scratch_dir(job: str) -> Iterator[Path]:
    """A private working folder under ROADIE_TMP_DIR, removed however the run ends. A run killed outright (SIGKILL,
    OOM) cannot remove its own: the folder's owner lock (flock, released by the kernel when the process dies) lets
    the next run on the machine find such leftovers and remove them."""
    parent = get_settings().tmp_dir
    remove_dead_scratch_dirs(Path(parent) if parent else Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"roadie-{job}-", dir=parent) as tmp:
        # Locked before it gets its name, so the sweep never sees an owner file without its lock.
        owner_path = Path(tmp) / f"{OWNER_LOCK}.new"
        with open(owner_path, "w") as owner:
            fcntl.flock(owner, fcntl.LOCK_EX)
            os.rename(owner_path, Path(tmp) / OWNER_LOCK)
            yield Path(tmp)


def remove_dead_scratch_dirs(parent: Path) -> list[Path]:
    """Remove roadie-* working folders whose owner process is gone (their lock is free)."""
    removed: list[Path] = []
    for directory in parent.glob("roadie-*"):
        try:
            with open(directory / OWNER_LOCK) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a live run holds it
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
        except OSError:  # no owner file (not ours, or not locked yet) or a live owner
            continue
    return removed
