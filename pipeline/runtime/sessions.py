"""onnxruntime sessions on an asked device, asserted (no torch import: benchmark workers of ONNX
artifacts stay free of torch's memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.errors import DeviceError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnx_session(path: Path, device: str = "cpu", threads: int | None = None, strict_device: bool = False) -> Any:
    """An onnxruntime session on ``device``; raises DeviceError if it did not get that provider.

    With ``strict_device`` on CUDA, a graph with any node that would fall back to the CPU is
    refused (session.disable_cpu_ep_fallback), so a benchmark never times a half-CPU model.
    """
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise DeviceError(f"unknown device {device!r} (known: {', '.join(PROVIDERS)})")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not ours
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if strict_device and device == "cuda":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    wanted = PROVIDERS[device]
    if wanted not in ort.get_available_providers():
        raise DeviceError(f"onnxruntime has no {wanted} here (available: {', '.join(ort.get_available_providers())});"
                          f" install the gpu extra for CUDA")
    providers = [wanted] if device == "cpu" else [wanted, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types; the fallback refusal is one of them
        if strict_device and "fallback" in str(exc).lower():
            raise DeviceError(f"{path}: some nodes would run on the CPU though {wanted} was asked for") from exc
        raise
    if session.get_providers()[0] != wanted:
        raise DeviceError(f"{path}: onnxruntime session got {session.get_providers()[0]}, not {wanted}")
    return session
