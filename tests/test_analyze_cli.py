"""`roadie analyze` and `roadie waveform`, run as a user runs them: the real command in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tasks.media import loudness
from tests.support import encode, music_like, sine, write_wav

HOSTILE = ["$(touch pwned).wav", "a;b ls.wav", "with space.flac", "quo'te\"s.wav", "ünïcødé ♫.wav", "-z.wav"]


def roadie(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "roadie", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    good = write_wav(root / "good.wav", music_like(11.0, 44100, 2, seed=21), 44100)
    out = {"good": good, "tone": write_wav(root / "tone.wav", sine(1000, 10.0, 48000, -23.0, channels=1), 48000)}
    (root / "empty.wav").write_bytes(b"")
    (root / "random.wav").write_bytes(np.random.default_rng(2).bytes(30_000))
    (root / "text.mp3").write_text("definitely not an mp3\n" * 50)
    flac = encode(good, root / "full.flac").read_bytes()
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    out.update(
        {
            k: root / n
            for k, n in [
                ("empty", "empty.wav"),
                ("random", "random.wav"),
                ("text", "text.mp3"),
                ("truncated", "truncated.flac"),
            ]
        }
    )
    for i, name in enumerate(HOSTILE):
        target = root / name
        if name.endswith(".flac"):
            encode(out["tone"], target)
        else:
            target.write_bytes(out["tone"].read_bytes())
        out[f"hostile{i}"] = target
    return out


def test_analyze_json_one_object_per_input_in_order(files: dict[str, Path]):
    root = files["good"].parent
    names = ["good.wav", "empty.wav", "random.wav", "text.mp3", "truncated.flac", "tone.wav", "missing.wav"]
    done = roadie("analyze", "--json", *names, cwd=root)
    assert done.returncode == 1, done.stderr
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["input"] for o in objects] == names
    good, tone = objects[0], objects[5]
    assert set(good) >= {
        "input",
        "duration_s",
        "sample_rate",
        "channels",
        "loudness",
        "waveform",
        "fingerprint",
        "warnings",
    }
    assert (good["duration_s"], good["sample_rate"], good["channels"]) == (11.0, 44100, 2)
    assert good["warnings"] == [] and good["loudness"]["agrees"] is True
    assert set(good["loudness"]) >= {
        "integrated_lufs",
        "loudness_range_lu",
        "true_peak_dbtp",
        "ffmpeg",
        "pyloudnorm",
        "delta_lu",
        "agrees",
    }
    assert good["loudness"]["integrated_lufs"] == loudness.measure_ffmpeg(files["good"], 2).integrated_lufs
    assert good["waveform"]["samples_per_pixel"] == 2205 and good["waveform"]["length"] == 220
    assert len(good["fingerprint"]["items"]) > 50 and good["fingerprint"]["duration_s"] == 11.0
    assert tone["loudness"]["integrated_lufs"] == -23.0  # mono, measured as dual mono
    for bad in objects[1:5] + objects[6:]:
        assert set(bad) == {"input", "error"} and bad["error"], bad
        assert str(root) not in bad["error"]
    assert "empty" in objects[1]["error"] and "truncated or corrupt" in objects[4]["error"]


def test_analyze_hostile_names_are_just_names(files: dict[str, Path]):
    root = files["good"].parent
    done = roadie("analyze", "--json", "--", *HOSTILE, cwd=root)
    assert done.returncode == 0, done.stderr
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["input"] for o in objects] == HOSTILE
    assert all(o["loudness"]["integrated_lufs"] == -23.0 for o in objects)
    assert not (root / "pwned").exists()


def test_analyze_human_output(files: dict[str, Path]):
    root = files["good"].parent
    done = roadie("analyze", "good.wav", "text.mp3", cwd=root)
    assert done.returncode == 1
    assert "good.wav: 11.00 s, 44100 Hz, 2 ch" in done.stdout and "LUFS integrated" in done.stdout
    assert "meters agree" in done.stdout and "text.mp3: error: " in done.stdout


def test_waveform_json_dat_png(files: dict[str, Path]):
    root = files["good"].parent
    done = roadie("waveform", "good.wav", "-o", "w.json", "--bits", "8", "--pixels-per-second", "20", cwd=root)
    assert done.returncode == 0, done.stderr
    text = (root / "w.json").read_text()
    doc = json.loads(text)
    assert text.endswith("}\n") and text.count("\n") == 1
    assert (doc["version"], doc["channels"], doc["sample_rate"], doc["samples_per_pixel"], doc["bits"]) == (
        2,
        1,
        44100,
        2205,
        8,
    )
    # The mixed 8-bit values from the written int16 samples, computed here the slow way.
    ints = sf.read(str(files["good"]), dtype="int16")[0].astype(int)
    mono = [int(s / 2) for s in ints.sum(axis=1)]  # int(): truncation toward zero, like C
    expected = []
    for start in range(0, len(mono), 2205):
        block = mono[start : start + 2205]
        expected += [int(min(block) / 256), int(max(block) / 256)]
    assert doc["data"] == expected and doc["length"] == len(expected) // 2

    done = roadie("waveform", "good.wav", "-o", "w.dat", "-z", "512", "--split-channels", cwd=root)
    assert done.returncode == 0, done.stderr
    data = (root / "w.dat").read_bytes()
    header = np.frombuffer(data[:24], "<i4")
    assert list(header) == [2, 0, 44100, 512, -(-len(ints) // 512), 2]
    assert len(data) == 24 + 2 * 2 * 2 * header[4]
    first = np.frombuffer(data[24:32], "<i2")
    assert list(first) == [ints[:512, 0].min(), ints[:512, 0].max(), ints[:512, 1].min(), ints[:512, 1].max()]

    done = roadie("waveform", "with space.flac", "-o", "w.png", "--width", "500", "--height", "90", cwd=root)
    assert done.returncode == 0, done.stderr
    assert Image.open(io.BytesIO((root / "w.png").read_bytes())).size == (500, 90)
    assert not list(root.glob(".*.part"))


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["good.wav", "-o", "e.txt"], 2, "must end in .json, .dat or .png"),
        (["good.wav", "-o", "e.json", "--bits", "12"], 2, "--bits must be 8 or 16"),
        (["good.wav", "-o", "e.json", "-z", "1"], 2, "minimum is 2"),
        (["good.wav", "-o", "e.json", "-z", "64", "--pixels-per-second", "10"], 2, "not both"),
        (["good.wav", "-o", "e.json", "--pixels-per-second", "40000"], 2, "pixels per second"),
        (["truncated.flac", "-o", "e.json"], 1, "truncated or corrupt"),
        (["empty.wav", "-o", "e.json"], 1, "empty"),
        (["good.wav", "-o", "no/such/folder/e.json"], 2, "does not exist"),
    ],
)
def test_waveform_errors(files: dict[str, Path], args: list[str], code: int, message: str):
    root = files["good"].parent
    done = roadie("waveform", *args, cwd=root)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (root / "e.json").exists()  # a failed run leaves no output behind
