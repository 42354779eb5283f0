"""Quiet by default: a command that loads TensorFlow prints none of TensorFlow's C++ logs unless --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the real group, with one more command that loads TensorFlow the way the worker and training commands do
PROBE = """
from inferq.cli import main

@main.command("tf-probe")
def tf_probe() -> None:
    import tensorflow as tf
    print("devices:", len(tf.config.list_physical_devices()))

main()
"""
TF_LINES = ("cpu_feature_guard", "absl::InitializeLog", "oneDNN custom operations")

pytestmark = pytest.mark.slow


def run_probe(*flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    cmd = [sys.executable, "-c", PROBE, *flags, "tf-probe"]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_tensorflow_logs_are_hidden_by_default_and_shown_with_verbose() -> None:
    quiet, loud = run_probe(), run_probe("--verbose")
    assert quiet.returncode == 0 and "devices:" in quiet.stdout, quiet.stderr[-2000:]
    assert not [line for line in quiet.stderr.splitlines() if any(t in line for t in TF_LINES)], quiet.stderr
    assert loud.returncode == 0 and any(t in loud.stderr for t in TF_LINES), loud.stderr[-2000:]


FILTER_PROBE = """
import os, sys
from inferq.quiet import start_up_noise_filtered
with start_up_noise_filtered():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 00:00:1796317599.102881   28671 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"E0000 00:00:1796317599.102881   28671 cuda.cc:10] failed call to cuInit\\n")
    print("a Python warning", file=sys.stderr)
print("after", file=sys.stderr)
"""


def test_only_start_up_info_and_warning_lines_are_filtered_out() -> None:
    """Errors (E...) and anything else written while TensorFlow is imported still reach stderr, in order."""
    out = subprocess.run([sys.executable, "-c", FILTER_PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "E0000 00:00:1796317599.102881   28671 cuda.cc:10] failed call to cuInit",
        "a Python warning",
        "after",
    ]


def test_verbose_is_in_the_help() -> None:
    out = subprocess.run([sys.executable, "-m", "inferq", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "--verbose" in out.stdout
