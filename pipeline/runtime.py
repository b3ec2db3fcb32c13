"""Runner: run any artifact (eager, TorchScript, ONNX) on a device, behind one callable.

Verification and benchmarks never care which format an artifact has; they ask a Runner. The
device asked for is asserted, not assumed: an onnxruntime session that did not get the execution
provider it asked for is an error, never a silent CPU fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifact import Artifact, Format
from pipeline.errors import DeviceError
from pipeline.inputs import Inputs
from pipeline.model import ModelHandle
from pipeline.ort_session import PROVIDERS, onnx_session

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
ModelFn = Callable[[Inputs], Outputs]


def check_device(device: str) -> torch.device:
    """The torch device for 'cpu' or 'cuda', refusing CUDA when none is available."""
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda was asked for, but torch sees no CUDA device")
    if device not in PROVIDERS:
        raise DeviceError(f"unknown device {device!r} (known: {', '.join(PROVIDERS)})")
    return torch.device(device)


def _torch_fn(module: Any, input_names: list[str], output_names: list[str], device: str) -> ModelFn:
    dev = check_device(device)
    if isinstance(module, torch.nn.Module):
        module = module.to(dev).eval()
        wrong = [name for name, p in module.named_parameters() if p.device.type != dev.type]
        if wrong:
            raise DeviceError(f"parameter {wrong[0]} is not on {device} after moving the model there")

    def run(inputs: Inputs) -> Outputs:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(dev) for name in input_names]
        with torch.inference_mode():
            result = module(*args)
        if torch.is_tensor(result):
            result = (result,)
        return {name: value.detach().float().cpu().numpy() for name, value in zip(output_names, result, strict=False)}

    return run


def _onnx_fn(path: Path, device: str, threads: int | None) -> ModelFn:
    session = onnx_session(path, device, threads)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: Inputs) -> Outputs:
        feed = {name: np.ascontiguousarray(inputs[name]) for name in names}
        values = session.run(outputs, feed)
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(outputs, values, strict=True)}

    return run


class Runner:
    """Opens artifacts as callables from input arrays to output arrays."""

    def __init__(self, handle: ModelHandle, device: str = "cpu", threads: int | None = None) -> None:
        self.handle = handle
        self.device = device
        self.threads = threads
        if threads:
            torch.set_num_threads(threads)

    def open_eager(self) -> ModelFn:
        """A callable running a freshly loaded eager model."""
        return _torch_fn(self.handle.load().module, self.handle.input_names, self.handle.output_names, self.device)

    def open(self, artifact: Artifact) -> ModelFn:
        """A callable running ``artifact``; the eager source loads a fresh model."""
        names, outputs = self.handle.input_names, self.handle.output_names
        if artifact.format is Format.EAGER:
            return self.open_eager()
        assert artifact.path is not None
        if artifact.format is Format.TORCHSCRIPT:
            module = torch.jit.load(str(artifact.path), map_location=check_device(self.device))
            return _torch_fn(module, names, outputs, self.device)
        return _onnx_fn(artifact.path, self.device, self.threads)
