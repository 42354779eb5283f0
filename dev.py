#!/usr/bin/env python3
"""Bootstrap for a fresh machine with only Python 3.11+: make .venv, install inferq into it, run a command.

    python3 dev.py up          # the whole stack on embedded defaults (Ctrl-C stops it)
    python3 dev.py test        # the whole test suite (extra arguments go to pytest)
    python3 dev.py <command>   # any other `inferq` command, e.g. `python3 dev.py classify digit.png`

The virtualenv is (re)installed only when pyproject.toml changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("INFERQ_VENV", ROOT / ".venv"))
STAMP = VENV / ".inferq-install-stamp"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> Path:
    """Create .venv and install inferq with its dev extras, unless already current."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under an older python3
        sys.exit(f"inferq needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    python = BIN / "python"
    if not python.exists():
        print(f"creating virtualenv in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text() != _fingerprint():
        print(
            "installing inferq and its dependencies (first time: a few minutes, TensorFlow is large) ...",
            flush=True,
        )
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "on"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
        STAMP.write_text(_fingerprint())
    return python


def main(argv: list[str]) -> int:
    """Dispatch `test` to pytest and everything else to the inferq CLI, inside the virtualenv."""
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    python = ensure_venv()
    os.chdir(ROOT)
    runner = ["-m", "pytest", *argv[1:]] if argv[0] == "test" else ["-m", "inferq", *argv]
    cmd = [str(python), *runner]
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the child got the Ctrl-C too: wait for its clean shutdown
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
