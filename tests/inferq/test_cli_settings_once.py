"""A CLI command builds its Settings once (at the edge) and passes that object down."""

import pytest
from click.testing import CliRunner

import inferq.edge
from inferq.cli import main
from shared.config.settings import Settings


def test_a_client_command_builds_settings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Settings] = []

    def counting_settings(**overrides: object) -> Settings:
        built.append(Settings(**overrides))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(inferq.edge, "Settings", counting_settings)
    monkeypatch.setattr("inferq.client.Settings", counting_settings)
    # nothing listens there: the command reads its API URL and its API key, then fails to connect
    monkeypatch.setenv("INFERQ_API_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code != 0
    assert len(built) == 1, f"Settings built {len(built)} times"
