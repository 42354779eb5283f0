"""The layering contracts in pyproject.toml ([tool.importlinter]) hold: `lint-imports` passes.

A forbidden import (say `import worker` in a shared module) or an import cycle between
the modules of one package makes this test fail with import-linter's report.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_lint_imports_keeps_every_contract() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _settings_built_in(package: str) -> list[str]:
    """The modules of `package` that call `Settings(...)`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Settings":
                found.append(str(path.relative_to(ROOT)))
    return found


def test_settings_are_built_at_the_edge_and_passed_down() -> None:
    """One Settings object per process or command, built by its entry point (the CLI, the app factory, the worker's
    Celery app): the shared library and the API's routes only receive it."""
    assert _settings_built_in("shared") == []
    assert _settings_built_in("api") == ["api/app.py"]  # create_app(settings=None): the WSGI entry point
