"""`inferq train` as a user types it: the body it posts, uploading a local dataset first, and its help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from inferq import models_client, scoring_client
from inferq.cli import main

URL = "http://api.test"


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Capture what `inferq train` would POST instead of calling an API."""
    calls: list[dict[str, Any]] = []

    def fake_train(api_url: str, name: str, params: dict[str, Any], *, wait: bool, timeout: float) -> bool:
        calls.append({"api_url": api_url, "name": name, "params": params, "wait": wait})
        return True

    monkeypatch.setattr(models_client, "train", fake_train)
    return calls


def test_dataset_id_and_imbalance_are_posted(posted: list[dict[str, Any]]) -> None:
    """--dataset <id> --imbalance oversample become the body's dataset and imbalance, next to the other options."""
    args = ["train", "--api-url", URL, "--model", "shapes", "--dataset", "0f8e", "--imbalance", "oversample"]
    result = CliRunner().invoke(main, [*args, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    [call] = posted
    assert (call["name"], call["params"]["dataset"], call["params"]["imbalance"]) == ("shapes", "0f8e", "oversample")
    assert call["params"]["epochs"] == 2 and "class_weight" not in call["params"]


def test_the_default_is_mnist_without_an_imbalance_option(posted: list[dict[str, Any]]) -> None:
    """Without options the body names the built-in MNIST and leaves imbalance to the API's default."""
    assert CliRunner().invoke(main, ["train", "--api-url", URL]).exit_code == 0
    assert posted[0]["params"]["dataset"] == "mnist" and "imbalance" not in posted[0]["params"]


def test_a_local_file_is_uploaded_first(
    posted: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--dataset naming a local file uploads it and trains on the id the API gave it."""
    archive = tmp_path / "shapes.zip"
    archive.write_bytes(b"PK")
    uploads: list[Path] = []

    def fake_upload(api_url: str, path: Path) -> dict[str, Any]:
        uploads.append(path)
        return {"id": "1234", "item_count": 300, "label_counts": {"circle": 100}}

    monkeypatch.setattr(scoring_client, "upload_dataset", fake_upload)
    result = CliRunner().invoke(main, ["train", "--api-url", URL, "--dataset", str(archive)])
    assert result.exit_code == 0, result.output
    assert uploads == [archive] and posted[0]["params"]["dataset"] == "1234"


def test_help_explains_dataset_and_imbalance() -> None:
    """`inferq train --help` says what --dataset takes and what each imbalance option does."""
    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert "uploaded labelled dataset" in text and "oversample repeats" in text
    assert "[none|class_weight|oversample]" in text


@pytest.mark.parametrize(
    ("args", "augment"),
    [
        ([], "basic"),
        (["--augment", "realistic"], "realistic"),
        (["--augment", "none"], "none"),
        (["--no-augment"], "none"),
    ],
)
def test_augment_is_posted_as_its_mode(posted: list[dict[str, Any]], args: list[str], augment: str) -> None:
    """--augment basic|realistic|none (and --no-augment) reach the body's augment."""
    result = CliRunner().invoke(main, ["train", "--api-url", URL, *args])
    assert result.exit_code == 0, result.output
    assert posted[0]["params"]["augment"] == augment and "no_augment" not in posted[0]["params"]
