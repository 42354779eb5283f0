"""The docs: a short README, and a mkdocs site that builds with --strict (a broken link fails the suite)."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import Field

from shared.config.errors import InferqError
from shared.config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 150
FIRST_SCREEN_LINES = 20
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_ENV_VAR = re.compile(r"\bINFERQ_[A-Z0-9_]*[A-Z0-9]\b")
_PROBLEM_ROW = re.compile(r"^\| ((?:`[a-z-]+`(?:, )?)+) \| (\d{3}) \|", re.MULTILINE)


def load_hook() -> ModuleType:
    """docs/hooks/reference.py, the mkdocs hook that generates the reference tables, as a module."""
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_build(config_dir: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `mkdocs build --strict` on the mkdocs.yml in config_dir, offline, with this tree's code importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)]
    return subprocess.run(command, cwd=config_dir, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from this tree's mkdocs.yml into a temporary folder."""
    site_dir = tmp_path_factory.mktemp("site")
    done = mkdocs_build(ROOT, site_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    return site_dir


def test_readme_is_a_landing_page() -> None:
    """README.md is at most 150 lines and shows the two commands (as .ci/run uses them) on its first screen."""
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    first_screen = "\n".join(lines[:FIRST_SCREEN_LINES])
    assert "python3 dev.py up" in first_screen
    assert "python3 dev.py test" in first_screen


def test_readme_links_point_at_files_that_exist() -> None:
    """Every relative link of README.md (docs pages, images) names a file of the repository."""
    targets = [link.split("#")[0] for link in _LINK.findall(README.read_text()) if "://" not in link]
    assert "docs/index.md" in targets
    missing = [target for target in targets if target and not (ROOT / target).exists()]
    assert missing == []


def test_the_site_builds_strictly(site: Path) -> None:
    """`mkdocs build --strict` passes and renders every page of the navigation, the placeholders included."""
    for page in ("getting-started", "api", "webhooks", "bulk-scoring", "models", "delivery", "performance"):
        assert (site / page / "index.html").is_file(), page
    for page in ("lanes", "webapp", "observability", "operations/configuration", "operations/deployment"):
        assert (site / page / "index.html").is_file(), page


def test_every_setting_is_in_the_generated_reference(site: Path) -> None:
    """The configuration page lists every setting of shared/config/settings.py with its description, from the model."""
    page = html.unescape((site / "operations" / "configuration" / "index.html").read_text())
    for name, field in Settings.model_fields.items():
        assert f"<code>INFERQ_{name.upper()}</code>" in page, name
        assert field.description is not None
        assert re.sub(r"`([^`]*)`", r"<code>\1</code>", field.description) in page, name


def test_a_setting_without_description_fails_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator refuses a setting that has no description, naming it, instead of leaving a blank row."""
    hook = load_hook()

    class Undescribed(Settings):
        shiny_new_limit: int = Field(5, ge=1)

    monkeypatch.setattr(hook, "Settings", Undescribed)
    with pytest.raises(ValueError, match="shiny_new_limit"):
        hook.settings_table()


def test_the_generated_row_states_env_var_type_default_and_range() -> None:
    """A row of the reference carries what the model declares: env var, type, default (with its unit) and range."""
    table = load_hook().settings_table()
    assert "| `INFERQ_MAX_IMAGE_BYTES` | int | `8388608` (8 MiB) | ≥ 1024 | Bytes of one encoded image. |" in table
    assert "| `INFERQ_MNIST_CACHE` | path or none | *(empty)* |" in table


def test_every_setting_has_a_description() -> None:
    """Each setting carries the description the reference is generated from (the build refuses one without)."""
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_the_deployment_page_is_deploy_readme(site: Path) -> None:
    """deploy/README.md is shown in the site as it is, not copied by hand."""
    page = (site / "operations" / "deployment" / "index.html").read_text()
    assert "170098ba07d9f53c383a41bfd4c5166b0a4529a6" in page
    assert "--8&lt;--" not in page and "--8<--" not in page


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strict build fails on a link to a page that does not exist (so a broken link fails the suite)."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(ROOT / "deploy", copy / "deploy", ignore=shutil.ignore_patterns("k8s", "keda", "grafana"))
    assert mkdocs_build(copy, tmp_path / "good").returncode == 0
    page = copy / "docs" / "webhooks.md"
    page.write_text(page.read_text() + "\nSee [the old page](no-such-page.md).\n")
    done = mkdocs_build(copy, tmp_path / "broken")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr


def prose_files() -> list[Path]:
    """The hand-written text a reader sees: README.md, every docs page and deploy/README.md (shown in the site)."""
    return [README, ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_setting_the_docs_name_exists() -> None:
    """An INFERQ_* variable named in README.md or the docs is a setting of shared/config/settings.py (none renamed
    away); INFERQ_TEST_* variables are the test suite's own knobs, not settings."""
    known = {f"INFERQ_{name.upper()}" for name in Settings.model_fields}
    named = {
        (path.relative_to(ROOT).as_posix(), var) for path in prose_files() for var in _ENV_VAR.findall(path.read_text())
    }
    unknown = sorted((path, var) for path, var in named if var not in known and not var.startswith("INFERQ_TEST_"))
    assert unknown == []


def test_hand_written_problem_rows_match_the_code() -> None:
    """The problem types docs/api.md explains by hand carry the status shared/config/errors.py answers them with."""
    statuses = {cls.type_slug: cls.status for cls in load_hook()._subclasses(InferqError)}
    rows = _PROBLEM_ROW.findall((ROOT / "docs" / "api.md").read_text())
    assert len(rows) > 10
    wrong = [
        (slug, int(status), statuses.get(slug)) for slugs, status in rows for slug in re.findall(r"`([a-z-]+)`", slugs)
    ]
    assert [row for row in wrong if row[1] != row[2]] == []
