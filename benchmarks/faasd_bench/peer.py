"""The peer: MLServer 1.7.1 serving the same ONNX models through a small onnxruntime runtime.

MLServer lives in its own virtual environment, `benchmarks/.peer-venv` (git-ignored), which
`ensure_venv` creates on first use with pip: mlserver 1.7.1, uvloop 0.21.0 (with uvloop 0.22+
MLServer's inference worker dies at start) and the onnxruntime version faasd itself runs.
Every port binds 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnxruntime

from faasd_bench.procs import Server, descendants_of, memory_of

VENV = Path(__file__).resolve().parents[1] / ".peer-venv"
MLSERVER_VERSION = "1.7.1"
REQUIREMENTS = (
    f"mlserver=={MLSERVER_VERSION}",
    "uvloop==0.21.0",
    f"onnxruntime=={onnxruntime.__version__}",
    "numpy",
)
_STAMP = VENV / ".installed"
_RUNTIME = Path(__file__).with_name("mlserver_runtime.py")


def ensure_venv() -> Path:
    """The peer's `mlserver` executable, creating its virtual environment when missing."""
    wanted = "\n".join(REQUIREMENTS)
    if not (_STAMP.is_file() and _STAMP.read_text() == wanted):
        print(f"creating the peer's virtual environment in {VENV} (pip: "
              f"{' '.join(REQUIREMENTS)}); this takes a minute once", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        for argv in ([*pip, "--upgrade", "pip"], [*pip, *REQUIREMENTS]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        _STAMP.write_text(wanted)
    return VENV / "bin" / "mlserver"


@dataclass(frozen=True)
class PeerModel:
    """One model in the peer's repository; batching as MLServer's adaptive batcher takes it."""

    name: str
    model: Path
    threads: int = 1
    max_batch_size: int = 0
    max_batch_time_s: float = 0.0

    def write(self, repository: Path) -> None:
        folder = repository / self.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model, folder / "model.onnx")
        shutil.copyfile(_RUNTIME, folder / "onnx_runtime.py")
        settings = {
            "name": self.name,
            "implementation": "onnx_runtime.OnnxModel",
            "parameters": {"uri": "./model.onnx", "extra": {"threads": self.threads}},
            "max_batch_size": self.max_batch_size,
            "max_batch_time": self.max_batch_time_s,
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


def start_mlserver(scratch: Path, models: list[PeerModel], ports: tuple[int, int, int]) -> Server:
    """Start MLServer on 127.0.0.1 (http, grpc, metrics ports) serving `models`; not yet ready."""
    mlserver = ensure_venv()
    repository = scratch / "mlserver-repo"
    repository.mkdir(parents=True, exist_ok=True)
    for model in models:
        model.write(repository)
    http_port, grpc_port, metrics_port = ports
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "debug": False,
        "parallel_workers": 1,
    }
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    return Server("mlserver", [str(mlserver), "start", str(repository)],
                  scratch / "mlserver.log", cwd=scratch)


def total_memory_mb(server: Server) -> dict[str, float]:
    """RSS and PSS summed over the peer's process tree (MLServer runs several processes)."""
    pids = [server.pid, *descendants_of(server.pid)]
    memories = [memory_of(pid) for pid in pids]
    return {
        "processes": len(memories),
        "rss_mb": round(sum(m.rss_mb for m in memories), 1),
        "pss_mb": round(sum(m.pss_mb for m in memories), 1),
    }
