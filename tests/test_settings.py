"""One settings object from ROADIE_* variables, with documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from roadie.settings import Settings


def test_defaults_derive_from_home(tmp_path, monkeypatch):
    for var in ("ROADIE_DATABASE_URL", "ROADIE_STORAGE_URL", "ROADIE_PREFECT_API_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ROADIE_HOME", str(tmp_path / "h"))
    s = Settings()
    assert s.home == (tmp_path / "h").resolve()
    assert s.database_url == f"sqlite:///{tmp_path / 'h' / 'roadie.db'}"
    assert s.storage_url == (tmp_path / "h" / "storage").as_uri()
    assert s.prefect_api_url is None
    assert s.default_formats == ("hls_opus", "hls_aac")


def test_home_defaults_to_dot_roadie(monkeypatch):
    monkeypatch.delenv("ROADIE_HOME", raising=False)
    assert Settings().home == (Path.home() / ".roadie").resolve()


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("ROADIE_DATABASE_URL", "postgresql+psycopg2://u@h/db")
    monkeypatch.setenv("ROADIE_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("ROADIE_DEFAULT_FORMATS", '["hls_aac"]')
    s = Settings()
    assert (s.database_url, s.storage_url, s.prefect_api_url) == (
        "postgresql+psycopg2://u@h/db",
        "s3://bucket/prefix",
        "http://127.0.0.1:9/api",
    )
    assert s.default_formats == ("hls_aac",)


def test_unknown_default_format_is_refused(monkeypatch):
    monkeypatch.setenv("ROADIE_DEFAULT_FORMATS", '["hls_mp3"]')
    with pytest.raises(ValidationError, match="hls_mp3"):
        Settings()
