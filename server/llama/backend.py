"""What llama.cpp was built with and what it can see: the backend (CUDA, Metal, Vulkan, CPU),
its devices, and how many of a model's layers went to a GPU.

llama-cpp-python exposes no device calls, so ggml's own (`ggml_backend_dev_*`, stable in
ggml's public header) are read from the libggml it loaded. A build whose GPU backend is
there but sees no GPU says so (`warning`), instead of quietly running on the CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

logger = logging.getLogger("hearth")

# enum ggml_backend_dev_type
_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
# GPU backends by the library file llama-cpp-python ships for them.
_GPU_LIBRARIES = {
    "cuda": "libggml-cuda",
    "metal": "libggml-metal",
    "vulkan": "libggml-vulkan",
    "hip": "libggml-hip",
    "sycl": "libggml-sycl",
}


@dataclass(frozen=True)
class Device:
    name: str  # "CUDA0", "Metal", "CPU"
    description: str  # "NVIDIA H200", "Apple M3 Max", the CPU's name
    kind: str  # cpu | gpu | igpu | accel


@dataclass(frozen=True)
class BackendInfo:
    backend: str  # cuda | metal | vulkan | hip | sycl | cpu
    devices: list[Device] = field(default_factory=list)
    warning: str | None = None

    @property
    def gpus(self) -> list[Device]:
        return [d for d in self.devices if d.kind in ("gpu", "igpu")]

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "backend": self.backend,
            "devices": [d.__dict__ for d in self.devices],
        }
        if self.warning:
            out["warning"] = self.warning
        return out


def _library_dir() -> Path:
    # llama-cpp-python loads its libraries from here, or from LLAMA_CPP_LIB_PATH.
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    return Path(override) if override else Path(llama_cpp.__file__).parent / "lib"


def _built_backends(lib_dir: Path) -> list[str]:
    names = [p.name for p in lib_dir.glob("libggml-*")] if lib_dir.is_dir() else []
    found = [b for b, prefix in _GPU_LIBRARIES.items() if any(n.startswith(prefix) for n in names)]
    return found


def _devices(lib_dir: Path) -> list[Device]:
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        path = lib_dir / name
        if path.exists():
            break
    else:
        return []
    try:
        ggml = ctypes.CDLL(str(path))
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for fn in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
            fn.restype = ctypes.c_char_p
            fn.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_dev_type.restype = ctypes.c_int
        ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError) as e:
        logger.debug("cannot read ggml's devices: %s", e)
        return []
    devices = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        devices.append(
            Device(
                (ggml.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                (ggml.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                _DEVICE_KINDS.get(ggml.ggml_backend_dev_type(dev), "unknown"),
            )
        )
    return devices


def backend_info(lib_dir: Path | None = None) -> BackendInfo:
    """After llama_backend_init (any loaded model has done it). lib_dir: where llama.cpp's
    libraries are (default: llama-cpp-python's)."""
    lib_dir = lib_dir or _library_dir()
    devices = _devices(lib_dir)
    built = _built_backends(lib_dir)
    gpus = [d for d in devices if d.kind in ("gpu", "igpu")]
    if gpus:
        name = gpus[0].name.lower()
        fallback = built[0] if built else "gpu"
        backend = next((b for b in _GPU_LIBRARIES if name.startswith(b)), fallback)
        return BackendInfo(backend, devices)
    if built:
        return BackendInfo(
            built[0],
            devices,
            f"llama.cpp was built with {built[0].upper()} but sees no GPU: running on the CPU "
            "(check the driver, CUDA_VISIBLE_DEVICES, or build for the CPU with "
            "HEARTH_BACKEND=cpu)",
        )
    return BackendInfo("cpu", devices)


def layers_offloaded(n_layer: int, n_gpu_layers: int, info: BackendInfo) -> int:
    """How many of the model's layers (and its output layer, as llama.cpp counts them:
    n_layer + 1) run on a GPU."""
    if not info.gpus:
        return 0
    total = n_layer + 1
    return total if n_gpu_layers < 0 else min(n_gpu_layers, total)
