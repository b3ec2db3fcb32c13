"""onnxruntime sessions and OpenVINO compiled models on an asked device, asserted (no torch import:
benchmark workers of ONNX and OpenVINO artifacts stay free of torch's memory)."""

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


OPENVINO_DEVICES = {"cpu": "CPU"}  # OpenVINO's GPU plugin is for Intel GPUs; CUDA is not among its devices
# How an IR is compiled for verification and benchmarks, and so how a bundle must be loaded to run what was
# checked: without the precision hint the CPU plugin runs bf16 on CPUs that have it (an AMD EPYC here did)
OPENVINO_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}


def openvino_model(path: Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An OpenVINO IR compiled for ``device``: latency hint, one stream, fp32 inference precision
    (the CPU plugin would otherwise pick bf16 on CPUs that have it, which the parity gate never saw),
    ``threads`` inference threads. Raises DeviceError when OpenVINO or the device is missing."""
    try:
        import openvino as ov
    except ImportError:
        raise DeviceError("OpenVINO is not installed: pip install -e '.[openvino]' (make setup installs it "
                          "on x86-64)") from None
    if device not in OPENVINO_DEVICES:
        raise DeviceError(f"OpenVINO runs on {', '.join(OPENVINO_DEVICES)} here, not {device!r}")
    config: dict[str, Any] = dict(OPENVINO_CONFIG)
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), OPENVINO_DEVICES[device], config)
    got = list(compiled.get_property("EXECUTION_DEVICES"))
    if got != [OPENVINO_DEVICES[device]]:
        raise DeviceError(f"{path}: OpenVINO compiled for {got}, not {OPENVINO_DEVICES[device]}")
    return compiled
