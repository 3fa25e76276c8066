"""The analysis runs in bounded memory, proven without a benchmark: a long generated upload is analysed by a child
process (and its ffmpeg and fpcalc children) inside a cgroup whose memory limit is far below what holding the PCM
would take. The cgroup (v1 memory controller) counts the whole process tree; with no swap, going over the limit
kills. A control process that does hold that much PCM is killed in the same cgroup, so the limit is real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
LIMIT_MIB = 288
MINUTES = 30
SAMPLE_RATE = 44100
ROOT = Path(__file__).resolve().parents[1]


def _cgroup_unusable() -> str | None:
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
    if not os.access(CGROUP_ROOT, os.W_OK):
        return "cannot create a memory cgroup (not root)"
    return None


pytestmark = pytest.mark.skipif(_cgroup_unusable() is not None, reason=_cgroup_unusable() or "")


@pytest.fixture
def cgroup() -> Iterator[Path]:
    group = CGROUP_ROOT / f"roadie-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(LIMIT_MIB << 20))
    swap = group / "memory.memsw.limit_in_bytes"
    if swap.exists():  # with swap accounting on, swap counts too: over the limit still means killed
        swap.write_text(str(LIMIT_MIB << 20))
    yield group
    for pid in (group / "cgroup.procs").read_text().split():
        subprocess.run(["kill", "-9", pid], check=False)
    group.rmdir()


def run_in(group: Path, code: str, timeout: float) -> subprocess.CompletedProcess:
    """Python `code` as a child moved into `group` before it starts (its own children inherit the group)."""
    procs = group / "cgroup.procs"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: procs.write_text(str(os.getpid())),
    )


@pytest.fixture(scope="module")
def long_upload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 minutes of stereo sine and noise, generated a minute at a time (never whole in this process either)."""
    path = tmp_path_factory.mktemp("long") / "thirty-minutes.wav"
    rng = np.random.default_rng(30)
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 2, subtype="PCM_16") as out:
        for minute in range(MINUTES):
            t = minute * 60 + np.arange(60 * SAMPLE_RATE) / SAMPLE_RATE
            level = 0.3 + 0.2 * np.sin(2 * np.pi * t / 47.0)
            tone = np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 495 * t)], axis=1)
            out.write((level[:, None] * tone + rng.normal(0, 0.05, (len(t), 2))).astype(np.float32))
    return path


def test_thirty_minutes_are_analysed_within_a_small_memory_limit(cgroup: Path, long_upload: Path):
    # Holding this PCM as float32 alone takes 30 x 60 x 44100 x 2 x 4 bytes = 606 MiB: more than twice the limit.
    pcm_mib = MINUTES * 60 * SAMPLE_RATE * 2 * 4 / 2**20
    assert pcm_mib > 2 * LIMIT_MIB

    control = run_in(
        cgroup,
        f"""
        import numpy as np
        pcm = np.ones(({MINUTES * 60 * SAMPLE_RATE}, 2), dtype=np.float32)
        print("held", pcm.nbytes)
    """,
        timeout=120,
    )
    assert control.returncode == -9, f"the cgroup did not stop a process over its limit: {control}"

    (cgroup / "memory.max_usage_in_bytes").write_text("0")  # forget the control's peak
    result = run_in(
        cgroup,
        f"""
        import json
        from tasks.media.analysis import analyze_file
        analysis = analyze_file({str(long_upload)!r})
        print(json.dumps({{**analysis.as_dict(), "png": len(analysis.png or b"")}}))
    """,
        timeout=600,
    )
    assert result.returncode == 0, f"the analysis did not finish under {LIMIT_MIB} MiB: {result.stderr[-2000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    peak_mib = int((cgroup / "memory.max_usage_in_bytes").read_text()) / 2**20
    assert peak_mib <= LIMIT_MIB
    assert report["duration_s"] == pytest.approx(MINUTES * 60, abs=0.001)
    assert report["waveform"]["length"] == MINUTES * 60 * 20  # 20 px/s, the whole track
    assert report["loudness"]["integrated_lufs"] is not None and report["loudness"]["agrees"]
    assert report["fingerprint"]["item_count"] > 900 and report["png"] > 1000
    assert report["warnings"] == []
