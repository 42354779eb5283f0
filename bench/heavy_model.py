"""Heavy mode of bench/online.py: a wider CNN whose forward pass dominates a job (>= 20x the default model's
FLOPs), registered as `bench-heavy@production` in a benchmark stack (random weights: only its cost matters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEAVY_NAME = "bench-heavy"


def build_heavy() -> Any:
    """Conv 64 -> Conv 128 -> pool -> Conv 128 -> pool -> Dense 256 -> softmax(10), on 28x28x1 inputs."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name="image"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPool2D(),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPool2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="bench_heavy",
    )


def flops(model: Any) -> int:
    """Multiply-adds x 2 of one image through the model's Conv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def register_heavy(data_dir: Path, database_url: str) -> float:
    """Save the heavy model under data_dir and register it with the production alias; its FLOPs / the default's."""
    from shared.config.settings import Settings
    from shared.db.engine import make_engine, make_sessionmaker, session_scope
    from shared.registry.versions import register_version
    from worker.cnn import build_cnn
    from worker.training import save_keras

    settings = Settings(data_dir=data_dir, database_url=database_url)
    model = build_heavy()
    engine = make_engine(settings)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            mv = register_version(
                session,
                name=HEAVY_NAME,
                format="keras",
                artifact_uri="pending",
                size_bytes=0,
                aliases=(settings.default_alias,),
            )
            relative = Path("models") / HEAVY_NAME / str(mv.version) / "model.keras"
            mv.size_bytes = save_keras(model, data_dir / relative)
            mv.artifact_uri = str(relative)
    finally:
        engine.dispose()
    return flops(model) / flops(build_cnn())
