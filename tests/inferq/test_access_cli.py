"""`inferq keys` and `inferq tenants` on the database, the local key of `inferq up`, and the CLI sending its key."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from inferq import client as cli_client
from inferq.access import ensure_local_key
from inferq.cli import main
from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker, upgrade_database
from shared.db.tenancy_models import ApiKey
from shared.tenancy import apikeys


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """INFERQ_* pointing at a migrated SQLite database under tmp_path (and nothing else of the developer's)."""
    for key in list(os.environ):
        if key.startswith("INFERQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("INFERQ_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    s = Settings()
    upgrade_database(s)
    return s


def _authenticates(settings: Settings, key: str) -> ApiKey | None:
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            return apikeys.authenticate(session=session, token=key)
    finally:
        engine.dispose()


def test_keys_create_prints_the_key_once_on_stdout(settings: Settings) -> None:
    """`keys create` prints only the key on stdout (for $(...)), its id and scopes on stderr; the key works."""
    result = CliRunner().invoke(main, ["keys", "create", "--tenant", "acme", "--scope", "jobs", "--scope", "models"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    row = _authenticates(settings, key)
    assert row is not None and (row.tenant_id, row.scopes) == ("acme", ["jobs", "models"])
    assert row.id in result.stderr and key not in result.stderr


def test_keys_list_shows_no_secret_and_revoke_stops_the_key(settings: Settings) -> None:
    """`keys list` shows ids and tenants without secrets; `keys revoke ID` makes the key fail."""
    key = CliRunner().invoke(main, ["keys", "create", "--tenant", "acme"]).stdout.strip()
    key_id = key.split("_")[1]
    listed = CliRunner().invoke(main, ["keys", "list", "--tenant", "acme"])
    assert key_id in listed.stdout and key.split("_", 2)[2] not in listed.stdout
    assert CliRunner().invoke(main, ["keys", "revoke", key_id]).exit_code == 0
    assert _authenticates(settings, key) is None
    missing = CliRunner().invoke(main, ["keys", "revoke", "nope"])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_bad_tenant_is_refused(settings: Settings) -> None:
    """A malformed tenant id exits 1 with the reason, and no key is made."""
    result = CliRunner().invoke(main, ["keys", "create", "--tenant", "Not OK"])
    assert result.exit_code == 1 and "not a tenant id" in result.stderr and result.stdout == ""


def test_tenants_retention_shows_sets_and_resets(settings: Settings) -> None:
    """`tenants retention T` shows the default; with DAYS it sets T's own period; --default drops it."""

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["tenants", "retention", "acme", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "30 days (the default" in run()
    assert "7 days (its own)" in run("7")
    assert "kept forever (its own)" in run("0")
    assert "30 days (the default" in run("--default")


def test_inferq_up_keeps_one_working_key_in_a_private_file(settings: Settings) -> None:
    """The local key is saved with mode 0600 and reused while it works; revoked, it is replaced."""
    key, created = ensure_local_key(settings)
    assert created and settings.api_key_file.read_text().strip() == key
    assert stat.S_IMODE(settings.api_key_file.stat().st_mode) == 0o600
    row = _authenticates(settings, key)
    assert row is not None and row.tenant_id == "default" and row.scopes == list(apikeys.SCOPES)
    assert ensure_local_key(settings) == (key, False)
    assert CliRunner().invoke(main, ["keys", "revoke", key.split("_")[1]]).exit_code == 0
    new, created = ensure_local_key(settings)
    assert created and new != key and settings.api_key_file.read_text().strip() == new


def test_the_cli_client_sends_the_saved_key_or_inferq_api_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's requests carry the key of data_dir/api-key, or INFERQ_API_KEY when it is set."""
    seen: list[dict[str, str]] = []

    class Answer:
        status_code = 200

        def json(self) -> dict[str, Any]:
            return {"data": []}

    def fake_request(method: str, url: str, headers: dict[str, str], **_: Any) -> Answer:
        seen.append(headers)
        return Answer()

    monkeypatch.setattr(cli_client.requests, "request", fake_request)
    assert cli_client.auth_headers() == {}
    saved, _ = ensure_local_key(settings)
    cli_client._call("GET", "http://api/v1/jobs")
    monkeypatch.setenv("INFERQ_API_KEY", "iq_from_env")
    cli_client._call("GET", "http://api/v1/jobs")
    assert [h["Authorization"] for h in seen] == [f"Bearer {saved}", "Bearer iq_from_env"]
