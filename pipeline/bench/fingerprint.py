"""The environment a measurement was taken in: CPU, cores, GPU and driver, threads, library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

from pipeline.core.limits import usable_cores
from pipeline.core.versions import library_versions


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict[str, Any] | None:
    """Name, memory and driver of the first CUDA device, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                            "cuda": torch.version.cuda, "count": torch.cuda.device_count()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        info["driver"] = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        info["driver"] = None
    return info


def fingerprint(threads: int, device: str) -> dict[str, Any]:
    """Everything that shapes a timing, recorded with every benchmark result."""
    return {
        "cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(), "threads": threads,
        "inter_op_threads": 1, "device": device, "gpu": gpu_info() if device == "cuda" else None,
        "python": platform.python_version(), "platform": platform.platform(), "versions": library_versions(),
    }
