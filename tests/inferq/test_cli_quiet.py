"""Every CLI command is quiet by default: no TensorFlow C++ or absl start-up lines on stderr.

The command below goes through the real `inferq` group (its --verbose option) and then
imports TensorFlow and runs one op, as `worker`, `train-default` and `up`'s workers do.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUN_TF_COMMAND = """
import sys
import click
from inferq.cli import main

@main.command("tf-op")
def tf_op() -> None:
    import tensorflow as tf
    click.echo(int(tf.reduce_sum(tf.ones((2, 2)))))

main(sys.argv[1:])
"""

TF_LOG_MARKERS = ("oneDNN custom operations", "cpu_feature_guard", "This TensorFlow binary is optimized")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", RUN_TF_COMMAND, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_command_importing_tensorflow_prints_no_tf_log_lines() -> None:
    quiet = _run("tf-op")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "4"
    assert not [m for m in TF_LOG_MARKERS if m in quiet.stderr], quiet.stderr


def test_verbose_shows_them() -> None:
    loud = _run("--verbose", "tf-op")
    assert loud.returncode == 0, loud.stderr
    assert [m for m in TF_LOG_MARKERS if m in loud.stderr], loud.stderr
