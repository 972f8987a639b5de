"""Which backend a validation runs on, and what that device is (for a profile's header)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import asdict, dataclass


class DeviceError(RuntimeError):
    """The requested backend cannot run here; the message names the fix."""


@dataclass(frozen=True)
class DeviceInfo:
    backend: str  # "cuda" or "cpu"
    name: str  # GPU name, or the CPU model
    driver: str  # CUDA driver version, or the kernel release on the CPU backend
    torch_version: str
    cuda_version: str
    host: str
    cpu_count: int
    date: str

    def as_dict(self) -> dict[str, str | int]:
        return asdict(self)


def require_torch():
    try:
        import torch
    except ImportError:
        raise DeviceError("hssim validate needs PyTorch; fix: pip install torch==2.13.0") from None
    return torch


def resolve_backend(gpu: bool, device: str | None) -> str:
    """`--gpu` / `--device cpu|cuda` -> "cuda" or "cpu"; CUDA must be available when asked for."""
    if gpu and device == "cpu":
        raise DeviceError("--gpu and --device cpu contradict each other; fix: pass only one")
    backend = "cuda" if gpu or device == "cuda" else "cpu"
    torch = require_torch()
    if backend == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--gpu: no CUDA device is available to torch {torch.__version__}; "
                          "fix: run on a machine with an NVIDIA GPU, or use --device cpu")
    return backend


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(backend: str) -> DeviceInfo:
    torch = require_torch()
    if backend == "cuda":
        name = torch.cuda.get_device_name()
        try:
            drv = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
        except RuntimeError:
            drv = None
        driver = str(drv) if drv else f"cuda runtime {torch.version.cuda}"
    else:
        name = _cpu_model()
        driver = f"linux {platform.release()}" if platform.system() == "Linux" else platform.platform()
    return DeviceInfo(
        backend=backend, name=name, driver=driver, torch_version=torch.__version__,
        cuda_version=str(torch.version.cuda or "none"), host=platform.node(),
        cpu_count=os.cpu_count() or 1, date=_dt.date.today().isoformat(),
    )


def executor_threads(backend: str, active_streams: int = 3) -> int:
    """Torch intra-op threads the hw executor gives each stream thread (it splits the cores)."""
    if backend == "cuda":
        return require_torch().get_num_threads()
    return max(1, (os.cpu_count() or 1) // active_streams)
