"""Which backend a validation runs on, and what that device is (for a profile's header)."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass

from ..errors import DeviceError


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
        flag = "--gpu" if gpu else "--device cuda"
        raise DeviceError(f"{flag}: no CUDA device is available to torch {torch.__version__}; "
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


def _driver_from_nvml() -> str | None:
    try:
        import pynvml  # optional (nvidia-ml-py); not a dependency
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - any NVML failure: try the next source
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _driver_from_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [x.strip() for x in out.splitlines() if x.strip()]
    return lines[0] if lines else None


def _driver_from_libcuda() -> str | None:
    """The CUDA driver API's version (`cuDriverGetVersion`, e.g. 12040 -> "CUDA 12.4 driver API")."""
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = ctypes.c_int(0)
        try:
            if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value:
                return f"CUDA {v.value // 1000}.{(v.value % 1000) // 10} driver API"
        except AttributeError:
            continue
    return None


def cuda_driver_version() -> str | None:
    """The NVIDIA driver version: NVML (`pynvml`, if importable), else `nvidia-smi`, else the
    driver API version from libcuda; None if none answers."""
    for source in (_driver_from_nvml, _driver_from_smi, _driver_from_libcuda):
        v = source()
        if v:
            return v
    return None


def device_info(backend: str) -> DeviceInfo:
    torch = require_torch()
    if backend == "cuda":
        name = torch.cuda.get_device_name()
        drv = cuda_driver_version()
        driver = drv if drv else f"cuda runtime {torch.version.cuda}"
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
