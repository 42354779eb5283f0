"""The atheris fuzz target of the image path: a short run finds nothing, and its limits do catch what they must."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.config.errors import InvalidImage
from tests.fuzz import fuzz_imaging

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(fuzz_imaging.__file__)
RUN_SECONDS = 10  # the short run of the default test suite; docs/getting-started.md documents the long one
MIN_RUNS = 1000  # ~500 inputs/s on one idle core of a 2-core machine; a tenth of that for a busy machine


def _fuzz(tmp: Path, name: str, *flags: str, self_test: str = "") -> subprocess.Popen[str]:
    """Start the fuzz target on a fresh seeded corpus under tmp, artifacts (crashing inputs) in tmp too."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "INFERQ_FUZZ_SELF_TEST": self_test}
    if self_test:  # a broken target needs no coverage feedback from Pillow (whose instrumentation takes ~10 s)
        env["INFERQ_FUZZ_INSTRUMENT"] = "shared"
    cmd = [sys.executable, str(TARGET), *flags, f"-artifact_prefix={tmp}/{name}-", str(tmp / f"corpus-{name}")]
    # libFuzzer's -rss_limit_mb reads the peak RSS, and Linux carries a process's peak across fork+exec: started
    # straight from a test process that has loaded TensorFlow (~1.5 GB), the fuzzer would be "out of memory" on
    # its first input. A small Python in between forks it with a fresh peak.
    hop = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))", *cmd]
    return subprocess.Popen(hop, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_seeds_are_valid_images() -> None:
    """Every seed of the corpus decodes to an MNIST-shaped array: the fuzzer starts from the accepted path."""
    seeds = fuzz_imaging.seeds()
    assert len(seeds) >= 15
    for data in seeds:
        fuzz_imaging.test_one_input(data)  # raises if the result is not (28, 28) float32 in [0, 1]


def test_target_lets_only_inferq_errors_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage is an InferqError (swallowed); any other exception, or a misshapen result, escapes as a crash."""
    fuzz_imaging.test_one_input(b"\x89PNG\r\n\x1a\n garbage")
    monkeypatch.setattr(fuzz_imaging, "preprocess", lambda data, max_pixels: {}[data])
    with pytest.raises(KeyError):
        fuzz_imaging.test_one_input(b"x")
    monkeypatch.setattr(fuzz_imaging, "preprocess", lambda data, max_pixels: np.zeros((28, 28), np.float64))
    with pytest.raises(AssertionError):
        fuzz_imaging.test_one_input(b"x")
    monkeypatch.setattr(fuzz_imaging, "preprocess", lambda data, max_pixels: (_ for _ in ()).throw(InvalidImage("x")))
    fuzz_imaging.test_one_input(b"x")


@pytest.mark.timeout(180)
def test_short_fuzz_run_finds_nothing_and_its_limits_bite(tmp_path: Path) -> None:
    """A 10-second run of the real target ends clean after thousands of inputs; meanwhile broken targets under the
    same limits are stopped: an unexpected exception, a hang (-timeout) and a memory blow-up (-rss_limit_mb)."""
    limits = ["-timeout=2", "-rss_limit_mb=768"]
    runs = {
        "real": _fuzz(tmp_path, "real", f"-max_total_time={RUN_SECONDS}", "-timeout=10", "-rss_limit_mb=1024"),
        "crash": _fuzz(tmp_path, "crash", *limits, self_test="crash"),
        "hang": _fuzz(tmp_path, "hang", *limits, self_test="hang"),
        "blow-up": _fuzz(tmp_path, "blow-up", "-timeout=60", "-rss_limit_mb=512", self_test="blow-up"),
    }
    logs = {name: proc.communicate(timeout=150)[0] for name, proc in runs.items()}
    codes = {name: proc.returncode for name, proc in runs.items()}

    done = re.search(r"Done (\d+) runs in (\d+) second", logs["real"])
    assert codes["real"] == 0 and done, logs["real"][-3000:]
    assert int(done.group(1)) >= MIN_RUNS, done.group(0)
    assert not list(tmp_path.glob("real-*")), "the real target left a crashing input behind"

    assert codes["crash"] != 0 and "Uncaught Python exception" in logs["crash"] and "KeyError" in logs["crash"]
    assert codes["hang"] != 0 and "Timeout" in logs["hang"], logs["hang"][-2000:]
    assert codes["blow-up"] != 0 and "out-of-memory" in logs["blow-up"], logs["blow-up"][-2000:]
    for name in ("crash", "hang", "blow-up"):
        assert list(tmp_path.glob(f"{name}-*")), f"{name}: no artifact written"
