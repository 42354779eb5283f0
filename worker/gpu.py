"""GPU pinning: choose the devices TensorFlow may see, before TensorFlow is imported.

CUDA reads CUDA_VISIBLE_DEVICES once, when TensorFlow first initialises it, so `pin_gpu` must run before
anything imports TensorFlow (or Keras, which imports it).  An empty setting means CPU-only: the variable is
set to the empty string, which hides every GPU from CUDA (and so from TensorFlow).  Nothing in this module
imports TensorFlow at import time: a worker loads it with its first Keras model or training-lane job
(`ensure_tensorflow`), so a worker that serves only TFLite models (LiteRT) never pays its ~7 CPU-seconds of import
and its memory.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

log = logging.getLogger(__name__)

ENV_VAR = "CUDA_VISIBLE_DEVICES"
_GPU_LIST = re.compile(r"\d+(,\d+)*")


def normalize_gpu(gpu: str) -> str:
    """Return `gpu` without whitespace ('0, 1' -> '0,1'), or raise ValueError unless it is '' or indices."""
    value = "".join(str(gpu).split())
    if value and not _GPU_LIST.fullmatch(value):
        raise ValueError(
            f"invalid GPU setting {gpu!r}: use '' for CPU-only, one index such as '0', "
            "or comma-separated indices such as '0,1'"
        )
    indices = value.split(",") if value else []
    if len(set(indices)) != len(indices):
        raise ValueError(f"invalid GPU setting {gpu!r}: an index is listed twice")
    return value


def device_label(gpu: str) -> str:
    """Return the label that names a worker: 'gpu<first index>' for a GPU setting, 'cpu' for ''."""
    value = normalize_gpu(gpu)
    return f"gpu{int(value.split(',')[0])}" if value else "cpu"


def pin_gpu(gpu: str) -> str:
    """Set CUDA_VISIBLE_DEVICES from `gpu` ('' -> '' = CPU-only) before TensorFlow loads; return the label.

    Raises ValueError for a malformed setting, and RuntimeError when a GPU is requested after TensorFlow
    was imported (the setting would be silently ignored), unless the variable already has that value.
    Asking for the CPU after TensorFlow loaded is only logged: it cannot make things worse.
    """
    value = normalize_gpu(gpu)
    label = device_label(value)
    already = os.environ.get(ENV_VAR)
    if "tensorflow" in sys.modules and already != value:
        if value:
            raise RuntimeError("pin_gpu must run before TensorFlow is imported")
        log.warning("CPU-only requested after TensorFlow was imported: %s=%r is not applied", ENV_VAR, already)
    os.environ[ENV_VAR] = value
    log.info("device pinned: %s=%r (worker device %s)", ENV_VAR, value, label)
    return label


_tensorflow_gpus: list[str] | None = None  # set once TensorFlow is configured in this process
_tensorflow_lock = threading.Lock()


def ensure_tensorflow() -> list[str]:
    """TensorFlow imported and configured (`configure_tensorflow`) once per process, before its first use; returns
    the visible GPU names. Thread-safe: the warm-up thread and a task thread may both reach it first."""
    global _tensorflow_gpus
    with _tensorflow_lock:
        if _tensorflow_gpus is None:
            _tensorflow_gpus = configure_tensorflow()
        return _tensorflow_gpus


def configure_tensorflow() -> list[str]:
    """Import TensorFlow, enable memory growth on every visible GPU, and return the visible GPU names."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for device in gpus:
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except (RuntimeError, ValueError) as exc:  # already initialised: growth can no longer change
            log.warning("could not enable memory growth on %s: %s", device.name, exc)
    if not gpus:
        requested = os.environ.get(ENV_VAR)
        level = logging.INFO if requested == "" else logging.WARNING
        log.log(level, "no GPU visible: running on the CPU (%s=%r)", ENV_VAR, requested)
    return [device.name for device in gpus]


def device_summary() -> str:
    """Return one line for the startup log: device label, CUDA_VISIBLE_DEVICES, and TensorFlow's GPUs."""
    value = os.environ.get(ENV_VAR)
    try:
        label = "unpinned" if value is None else device_label(value)
    except ValueError:
        label = "unknown"
    parts = [f"device={label}", f"{ENV_VAR}={value!r}" if value is not None else f"{ENV_VAR}=<unset>"]
    tf = sys.modules.get("tensorflow")
    if tf is None or not hasattr(tf, "config"):
        parts.append("tensorflow=not loaded")
    else:
        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        parts.append(f"tensorflow={getattr(tf, '__version__', '?')} gpus={gpus or 'none (CPU)'}")
    return " ".join(parts)


def memory_info() -> dict[str, dict[str, int]]:
    """{"GPU:0": {"current": bytes, "peak": bytes}} for each GPU TensorFlow sees in this process; {} on the CPU or
    before TensorFlow is loaded (a scrape never imports it)."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not hasattr(tf, "config"):
        return {}
    out: dict[str, dict[str, int]] = {}
    for index, _ in enumerate(tf.config.list_logical_devices("GPU")):
        name = f"GPU:{index}"
        info = tf.config.experimental.get_memory_info(name)
        out[name] = {"current": int(info["current"]), "peak": int(info["peak"])}
    return out
