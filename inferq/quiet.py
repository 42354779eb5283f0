"""Quiet by default: TensorFlow's C++ start-up lines (oneDNN, CPU features, absl's "before InitializeLog" warning)
and absl's Python warnings are hidden unless `inferq --verbose`.

TF_CPP_MIN_LOG_LEVEL=2 hides most of them, and is inherited by the processes a command starts. Since TensorFlow
2.21 a few lines are written through absl's C++ logging while `import tensorflow` runs, before TensorFlow reads that
variable (the oneDNN notice, once per shared library that carries it): those are filtered out of file descriptor 2
while the import runs, and everything else written there meanwhile (an error, a Python warning) is passed on.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

# an absl/glog INFO or WARNING line ("I0000 00:00:1796317599.102881   28671 port.cc:153] ...") or absl's notice
START_UP_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\])"
)


def quiet_tensorflow(verbose: bool) -> None:
    """Before TensorFlow is imported (only ever inside a command): its C++ logs at level 2 (errors still show; a
    TF_CPP_MIN_LOG_LEVEL the user set stays), its import filtered, absl's Python warnings off. `verbose` shows all."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    if verbose:
        return
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    try:
        from absl import logging as absl_logging
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to quieten
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def start_up_noise_filtered() -> Iterator[None]:
    """Run the block with file descriptor 2 in a temporary file, then write back every line but START_UP_NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held:
                if not START_UP_NOISE.match(line):
                    os.write(2, line)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the normal path finder does, and runs its import inside start_up_noise_filtered."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader: Any = spec.loader if spec is not None else None
        if loader is not None and hasattr(loader, "exec_module"):
            real = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                with start_up_noise_filtered():
                    real(module)

            loader.exec_module = exec_module
        return spec
