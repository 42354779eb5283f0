"""`--peer mlserver` of bench/online.py: Seldon MLServer with adaptive batching serving the same Keras model.

MLServer runs from its own virtualenv (made here on first use, reused after: ~/.cache/inferq-bench/mlserver-venv),
so its pins never meet inferq's. A small custom runtime loads the .keras file; the same number of clients send
the same digits, already preprocessed to (1, 28, 28, 1) float32 (MLServer has no image decoding), over the V2
inference protocol, and wait for the synchronous answer. Nothing is stored: this is the price of inferq's
durability made visible (see docs/performance.md), not a race.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

VENV = Path.home() / ".cache" / "inferq-bench" / "mlserver-venv"
PACKAGES = ["mlserver==1.7.1", "tensorflow-cpu==2.21.0", "keras==3.15.1"]  # the same TF/Keras as inferq's workers
RUNTIME = """
import keras
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class KerasDigits(MLModel):
    async def load(self) -> bool:
        self._model = keras.saving.load_model(self.settings.parameters.uri, compile=False)
        self._model.predict_on_batch(np.zeros((1, 28, 28, 1), np.float32))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        y = self._model.predict_on_batch(x)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", y)])
"""


def ensure_venv(log: Path) -> Path:
    """The MLServer virtualenv's python (python3.11 -m venv + pip install, once); SystemExit with pip's tail."""
    python = VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import mlserver, keras"], capture_output=True).returncode == 0
    ):
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    with open(log, "wb") as out:
        done = subprocess.run([python, "-m", "pip", "install", *PACKAGES], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(PACKAGES)} failed: {log.read_text()[-2000:]}")
    return python


def write_model_dir(where: Path, model_file: Path, *, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """settings.json, model-settings.json (adaptive batching: 64 items or 10 ms) and the runtime module. Inference
    runs in the server process (parallel_workers 0): MLServer 1.7.1's worker processes die at start with uvloop
    0.23 ("There is no current event loop in thread MainThread")."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "runtime.py").write_text(RUNTIME)
    server = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "parallel_workers": 0}
    (where / "settings.json").write_text(json.dumps(server))
    model = {
        "name": "digits",
        "implementation": "runtime.KerasDigits",
        "max_batch_size": 64,
        "max_batch_time": 0.01,
        "parameters": {"uri": str(model_file)},
    }
    (where / "model-settings.json").write_text(json.dumps(model))


def drive(url: str, arrays: list[np.ndarray], clients: int, seconds: float) -> tuple[int, float, list[float]]:
    """`clients` threads posting one image each, synchronously, for `seconds`: (requests, elapsed, latencies)."""
    bodies = [
        json.dumps(
            {"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": a.reshape(-1).tolist()}]}
        )
        for a in arrays
    ]
    lat: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        s, i = requests.Session(), 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = s.post(url, data=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}, timeout=60)
            r.raise_for_status()
            with lock:
                lat.append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), time.monotonic() - start, lat


def run_peer(tmp: Path, model_file: Path, arrays: list[np.ndarray], clients: int, seconds: float) -> dict[str, Any]:
    """Start MLServer on the model, warm it, measure `clients` clients; its requests/s and latency percentiles."""
    from online_stack import stop, wait_for

    from shared.runtime.embedded import free_port

    python = ensure_venv(tmp / "mlserver-pip.log")
    where = tmp / "mlserver"
    port = free_port()
    write_model_dir(where, model_file, http_port=port, grpc_port=free_port(), metrics_port=free_port())
    log = open(tmp / "mlserver.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(  # noqa: S603
        [python.parent / "mlserver", "start", str(where)],
        cwd=where,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/v2/models/digits/ready", timeout=2).ok, 300, "MLServer")
        drive(url, arrays, min(clients, 4), 3)  # warm-up
        n, elapsed, lat = drive(url, arrays, clients, seconds)
    finally:
        stop(proc)
        log.close()
    return {
        "mlserver_requests_per_s_32": n / elapsed,
        "mlserver_p50_ms_32": float(np.percentile(lat, 50) * 1000),
        "mlserver_p99_ms_32": float(np.percentile(lat, 99) * 1000),
    }
