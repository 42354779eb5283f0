"""GPU pinning: CUDA_VISIBLE_DEVICES is set from the setting before TensorFlow loads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from inferq.top import parse, total
from shared.runtime import metrics
from tests.faults.tiny_model import write as write_tiny_model
from worker import gpu
from worker.gpu import ENV_VAR, configure_tensorflow, device_label, device_summary, pin_gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_tf(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Pretend TensorFlow is not imported and CUDA_VISIBLE_DEVICES is unset (both restored afterwards)."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("setting", "env", "label"),
    [("0", "0", "gpu0"), ("1", "1", "gpu1"), ("", "", "cpu"), ("0,1", "0,1", "gpu0"), (" 2, 3 ", "2,3", "gpu2")],
)
def test_pin_gpu_sets_env_and_returns_label(no_tf: pytest.MonkeyPatch, setting: str, env: str, label: str) -> None:
    """pin_gpu writes the normalised setting to CUDA_VISIBLE_DEVICES ('' hides every GPU) and names the device."""
    assert pin_gpu(setting) == label
    assert os.environ[ENV_VAR] == env


@pytest.mark.parametrize("setting", ["a", "-1", "0,", ",0", "0;1", "gpu0", "0,0", "1.5"])
def test_invalid_settings_are_rejected(no_tf: pytest.MonkeyPatch, setting: str) -> None:
    """Anything but '' or comma-separated distinct indices is a ValueError naming the bad value."""
    with pytest.raises(ValueError, match="invalid GPU setting"):
        pin_gpu(setting)
    assert ENV_VAR not in os.environ


def test_device_label_does_not_touch_env(no_tf: pytest.MonkeyPatch) -> None:
    """device_label only computes the label."""
    assert (device_label("3,1"), device_label("")) == ("gpu3", "cpu")
    assert ENV_VAR not in os.environ


def test_gpu_after_tensorflow_import_is_an_error(no_tf: pytest.MonkeyPatch) -> None:
    """Asking for a GPU once TensorFlow is imported raises RuntimeError and leaves the env alone."""
    no_tf.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    with pytest.raises(RuntimeError, match="pin_gpu must run before TensorFlow is imported"):
        pin_gpu("0")
    assert ENV_VAR not in os.environ


def test_repeating_the_same_pin_after_import_is_allowed(no_tf: pytest.MonkeyPatch) -> None:
    """When CUDA_VISIBLE_DEVICES already has the requested value, a late pin_gpu is a no-op."""
    no_tf.setenv(ENV_VAR, "1")
    no_tf.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    assert pin_gpu("1") == "gpu1"


def test_cpu_after_tensorflow_import_only_warns(no_tf: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Asking for the CPU after TensorFlow loaded logs a warning instead of failing."""
    no_tf.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    with caplog.at_level(logging.WARNING, logger=gpu.__name__):
        assert pin_gpu("") == "cpu"
    assert "after TensorFlow was imported" in caplog.text


def test_device_summary_without_tensorflow(no_tf: pytest.MonkeyPatch) -> None:
    """The startup line names the label and the variable, and says TensorFlow is not loaded yet."""
    assert device_summary() == f"device=unpinned {ENV_VAR}=<unset> tensorflow=not loaded"
    pin_gpu("1")
    assert device_summary() == f"device=gpu1 {ENV_VAR}='1' tensorflow=not loaded"


class FakeConfig:
    """Stands in for tf.config with a fixed device list, recording memory-growth calls."""

    def __init__(self, names: list[str]) -> None:
        self.devices = [types.SimpleNamespace(name=n) for n in names]
        self.grown: list[str] = []
        self.experimental = types.SimpleNamespace(set_memory_growth=self._grow, get_memory_info=self._memory)

    def _memory(self, name: str) -> dict[str, int]:
        index = int(name.rsplit(":", 1)[1])
        return {"current": 1000 * (index + 1), "peak": 5000 * (index + 1)}

    def list_logical_devices(self, kind: str) -> list[types.SimpleNamespace]:
        return self.devices if kind == "GPU" else []

    def _grow(self, device: types.SimpleNamespace, enabled: bool) -> None:
        if device.name.endswith("1"):
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.grown.append(device.name)

    def list_physical_devices(self, kind: str) -> list[types.SimpleNamespace]:
        return self.devices if kind == "GPU" else []


def fake_tf(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> FakeConfig:
    """Install a fake `tensorflow` module whose config lists the given GPUs."""
    module = types.ModuleType("tensorflow")
    config = FakeConfig(names)
    module.config = config  # type: ignore[attr-defined]
    module.__version__ = "0.test"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorflow", module)
    return config


def test_configure_enables_memory_growth_on_each_gpu(
    no_tf: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every visible GPU gets memory growth; one that refuses is logged, and all names are returned."""
    names = ["/physical_device:GPU:0", "/physical_device:GPU:1"]
    config = fake_tf(no_tf, names)
    with caplog.at_level(logging.WARNING, logger=gpu.__name__):
        assert configure_tensorflow() == names
    assert config.grown == ["/physical_device:GPU:0"]
    assert "could not enable memory growth on /physical_device:GPU:1" in caplog.text
    assert "gpus=['/physical_device:GPU:0', '/physical_device:GPU:1']" in device_summary()


@pytest.mark.parametrize(("setting", "level"), [("", logging.INFO), ("0", logging.WARNING)])
def test_configure_without_gpu_logs_cpu(
    no_tf: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, setting: str, level: int
) -> None:
    """With no GPU visible it returns [] and logs 'running on the CPU' (a warning if a GPU was requested)."""
    pin_gpu(setting)
    fake_tf(no_tf, [])
    with caplog.at_level(logging.INFO, logger=gpu.__name__):
        assert configure_tensorflow() == []
    record = next(r for r in caplog.records if "no GPU visible: running on the CPU" in r.getMessage())
    assert record.levelno == level


def test_gpu_memory_gauge_per_device(no_tf: pytest.MonkeyPatch) -> None:
    """inferq_gpu_memory_bytes has current and peak bytes of each GPU TensorFlow reports, by device."""
    fake_tf(no_tf, ["/device:GPU:0", "/device:GPU:1"])
    assert gpu.memory_info() == {"GPU:0": {"current": 1000, "peak": 5000}, "GPU:1": {"current": 2000, "peak": 10000}}
    scraped = parse(metrics.scrape(metrics.GpuMemoryCollector(gpu.memory_info)).decode())
    assert total(scraped, "inferq_gpu_memory_bytes", device="GPU:1", kind="peak") == 10000
    assert total(scraped, "inferq_gpu_memory_bytes", device="GPU:0", kind="current") == 1000


def test_gpu_memory_gauge_absent_on_cpu(no_tf: pytest.MonkeyPatch) -> None:
    """Without TensorFlow loaded, or with no GPU, the scrape has no inferq_gpu_memory_bytes family at all."""
    collector = metrics.GpuMemoryCollector(gpu.memory_info)
    assert "inferq_gpu_memory_bytes" not in metrics.scrape(collector).decode()
    fake_tf(no_tf, [])
    assert "inferq_gpu_memory_bytes" not in metrics.scrape(collector).decode()


@pytest.mark.slow
def test_real_tensorflow_on_this_cpu_machine() -> None:
    """In a fresh interpreter pinned to GPU 0, real TensorFlow sees no GPU here and configure returns []."""
    code = (
        "import json, logging; logging.basicConfig(level=logging.INFO)\n"
        "from worker.gpu import pin_gpu, configure_tensorflow, device_summary\n"
        "label = pin_gpu('0')\n"
        "print(json.dumps({'label': label, 'gpus': configure_tensorflow(), 'summary': device_summary()}))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(ENV_VAR, None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["label"], result["gpus"]) == ("gpu0", [])
    assert result["summary"].startswith(f"device=gpu0 {ENV_VAR}='0' tensorflow=2.")
    assert "no GPU visible: running on the CPU" in done.stderr


def test_a_worker_serving_tflite_never_imports_tensorflow(tmp_path: Path) -> None:
    """Every task module a worker registers, and a TFLite model loaded and run through LiteRT, leave TensorFlow and
    Keras unimported (they load with the first Keras model or training job: ensure_tensorflow)."""
    model = write_tiny_model(tmp_path / "model.tflite")
    code = (
        "import sys\n"
        "import worker.celery_app, worker.inference, worker.tasks.classify, worker.tasks.scoring\n"
        "import worker.tasks.training, worker.tasks.webhooks, worker.tasks.retention, worker.tasks.idempotency\n"
        "from worker.runtime import load_model\n"
        f"m = load_model({str(model)!r}, 'tflite')\n"
        "print(m.num_classes, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["10", "False", "False"]
