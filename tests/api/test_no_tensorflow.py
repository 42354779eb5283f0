"""The API process never imports TensorFlow or Keras (it sends tasks by name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import api.app
    from shared.config.settings import Settings
    app = api.app.create_app(Settings(_env_file=None, data_dir=Path(sys.argv[1]), redis_url="redis://127.0.0.1:1/0"))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    banned = {"tensorflow", "keras", "tf_keras", "ai_edge_litert"}
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in banned)
    print(json.dumps(heavy))
    """
)


@pytest.mark.timeout(60)
def test_api_never_imports_tensorflow(tmp_path: Path) -> None:
    """Building the API app and serving requests loads neither tensorflow nor keras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == []
