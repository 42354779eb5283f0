"""Settings: defaults that need no setup, INFERQ_* variables, and the cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config.settings import Settings
from tests.factories import make_settings


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_need_no_setup() -> None:
    """Without configuration inferq uses SQLite, the embedded Redis and files under ./var."""
    s = _settings()
    assert s.data_dir == Path("var") and s.database_url == ""
    assert s.uses_embedded_redis and s.broker_url() == f"redis://127.0.0.1:{s.embedded_redis_port}/0"
    assert s.default_model == "mnist-cnn" and s.default_alias == "production"
    assert s.visibility_timeout > s.task_time_limit > s.task_soft_time_limit
    assert 1 <= s.default_top_k <= s.max_top_k
    assert s.resolved_api_url == "http://127.0.0.1:8000"
    assert s.blob_dir == Path("var/blobs") and s.model_dir == Path("var/models")


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """INFERQ_* environment variables set the matching settings, with type conversion."""
    monkeypatch.setenv("INFERQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INFERQ_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("INFERQ_MAX_IMAGES_PER_JOB", "7")
    monkeypatch.setenv("INFERQ_MAX_BATCH_WAIT_MS", "2.5")
    monkeypatch.setenv("inferq_default_model", "other-model")  # names are case-insensitive
    s = _settings()
    assert s.data_dir == tmp_path
    assert s.redis_url == "redis://cache:6379/2" and not s.uses_embedded_redis
    assert s.broker_url() == "redis://cache:6379/2"
    assert (s.max_images_per_job, s.max_batch_wait_ms, s.default_model) == (7, 2.5, "other-model")


def test_unprefixed_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only variables with the INFERQ_ prefix count (REDIS_URL alone changes nothing)."""
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("MAX_TOP_K", "99")
    s = _settings()
    assert s.uses_embedded_redis and s.max_top_k == 10


def test_explicit_values_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value passed to Settings() wins over the environment."""
    monkeypatch.setenv("INFERQ_MAX_TOP_K", "5")
    assert _settings(max_top_k=8).max_top_k == 8


def test_invalid_env_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed or out-of-range variable fails loudly, naming the setting."""
    monkeypatch.setenv("INFERQ_MAX_IMAGES_PER_JOB", "0")
    with pytest.raises(ValidationError, match="max_images_per_job"):
        _settings()


@pytest.mark.parametrize(("visibility", "limit"), [(360, 360), (100, 360)])
def test_visibility_timeout_must_exceed_task_time_limit(
    monkeypatch: pytest.MonkeyPatch, visibility: int, limit: int
) -> None:
    """visibility_timeout <= task_time_limit is refused with a message naming both settings."""
    monkeypatch.setenv("INFERQ_VISIBILITY_TIMEOUT", str(visibility))
    with pytest.raises(ValidationError) as info:
        _settings(task_time_limit=limit, task_soft_time_limit=limit - 10)
    text = str(info.value)
    assert "INFERQ_VISIBILITY_TIMEOUT" in text and "INFERQ_TASK_TIME_LIMIT" in text


def test_soft_limit_must_be_below_hard_limit() -> None:
    """task_soft_time_limit >= task_time_limit is refused, naming both settings."""
    with pytest.raises(ValidationError, match="INFERQ_TASK_SOFT_TIME_LIMIT.*INFERQ_TASK_TIME_LIMIT"):
        _settings(task_soft_time_limit=360, task_time_limit=360)


def test_default_top_k_must_not_exceed_max() -> None:
    """default_top_k above max_top_k is refused."""
    with pytest.raises(ValidationError, match="INFERQ_DEFAULT_TOP_K"):
        _settings(default_top_k=5, max_top_k=4)


def test_resolved_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    """Without database_url the database is an absolute SQLite file under data_dir."""
    s = make_settings(tmp_path)
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'inferq.db').resolve()}"


def test_relative_data_dir_gives_absolute_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative data_dir still yields an absolute SQLite path (the URL does not depend on a later chdir)."""
    monkeypatch.chdir(tmp_path)
    url = _settings(data_dir=Path("var")).resolved_database_url
    assert url == f"sqlite:///{tmp_path.resolve() / 'var' / 'inferq.db'}"


def test_database_url_is_used_as_given(tmp_path: Path) -> None:
    """An explicit database_url is returned unchanged."""
    url = "postgresql+psycopg://inferq:secret@db:5432/inferq"
    assert make_settings(tmp_path, database_url=url).resolved_database_url == url


def test_api_url_override() -> None:
    """api_url, when set, is the URL clients use."""
    assert _settings(api_url="https://inferq.example").resolved_api_url == "https://inferq.example"
