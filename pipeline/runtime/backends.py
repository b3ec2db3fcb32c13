"""Backends: run a model on inputs staged on the device, with the right synchronization.

A backend separates staging from running, so a timed region holds the model call alone: no
host-to-device copy, no device-to-host copy. A Runner (pipeline.runtime.runner) wraps a backend as
arrays in, arrays out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifact import Format
from pipeline.core.errors import DeviceError
from pipeline.model.inputs import Inputs
from pipeline.runtime.loaders import load_exported, load_torchscript
from pipeline.runtime.sessions import PROVIDERS, onnx_session, openvino_model
from pipeline.runtime.timing import CudaEventTimer, Timer

Call = Callable[[], Any]


def torch_device(device: str) -> Any:
    """The torch device for 'cpu' or 'cuda', refusing CUDA when none is available."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda was asked for, but torch sees no CUDA device")
    if device not in PROVIDERS:
        raise DeviceError(f"unknown device {device!r} (known: {', '.join(PROVIDERS)})")
    return torch.device(device)


class StagedBackend(ABC):
    """What every backend does the same way: a call staged on the device, and the run a server makes."""

    @abstractmethod
    def stage(self, inputs: Inputs) -> Call:
        """Place the inputs where the model reads them; return a call that runs it."""

    @abstractmethod
    def sync(self) -> None:
        """Wait for queued device work."""

    def run_host(self, inputs: Inputs) -> None:
        """Stage and run once, synchronized: what a server does per request."""
        self.stage(inputs)()
        self.sync()


class TorchBackend(StagedBackend):
    """Eager, TorchScript or torch.export module; CUDA events time it on GPU."""

    def __init__(self, module: Any, input_names: list[str], device: str, output_names: list[str] | None = None) -> None:
        import torch

        self.torch = torch
        self.device = torch_device(device)
        self.module = module.to(self.device) if isinstance(module, torch.nn.Module) else module
        if isinstance(self.module, torch.nn.Module):
            try:
                self.module.eval()
            except NotImplementedError:  # a torch.export program's module: its mode was fixed at export
                pass
            for name, param in self.module.named_parameters():
                if param.device.type != self.device.type:
                    raise DeviceError(f"parameter {name} is on {param.device.type}, not {device}")
        self.input_names = input_names
        self.output_names = output_names or []  # a module returns values, not names: the caller knows them
        self.timer: Timer = CudaEventTimer() if self.device.type == "cuda" else Timer()

    def sync(self) -> None:
        """Wait for queued device work."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def stage(self, inputs: Inputs) -> Call:
        """Copy inputs to the device now; return a call that runs the model on them."""
        torch = self.torch
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device) for name in self.input_names]
        for name, tensor in zip(self.input_names, tensors, strict=True):
            if tensor.device.type != self.device.type:
                raise DeviceError(f"input {name} is on {tensor.device.type}, not {self.device.type}")

        def call() -> Any:
            with torch.inference_mode():
                return self.module(*tensors)

        return call

    def host_outputs(self, inputs: Inputs) -> list[np.ndarray]:
        """Stage, run, and bring every output to the host (one step of a decoding loop)."""
        result = self.stage(inputs)()
        result = (result,) if self.torch.is_tensor(result) else result
        return [value.detach().cpu().numpy() for value in result]


class OrtBackend(StagedBackend):
    """onnxruntime session; on CUDA, IO binding keeps inputs and outputs on the device."""

    def __init__(self, path: Path, device: str, threads: int | None, strict_device: bool = True) -> None:
        self.device, self.path = device, path
        self.session = onnx_session(path, device, threads, strict_device=strict_device)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._binding: Any = None
        self.timer = Timer(self.sync)

    def sync(self) -> None:
        """Wait for the outputs of the last IO-bound run."""
        if self._binding is not None:
            self._binding.synchronize_outputs()

    def stage(self, inputs: Inputs) -> Call:
        """Place inputs where the session reads them (those the graph declares: an exporter may drop an
        unused one); return a call that runs it."""
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: no value for graph input(s) {', '.join(missing)}")
        if self.device == "cpu":
            feed = {name: np.ascontiguousarray(inputs[name]) for name in self.input_names}
            return lambda: self.session.run(self.output_names, feed)
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name in self.input_names:
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[name]), "cuda", 0)
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self._binding = binding
        return lambda: self.session.run_with_iobinding(binding)

    def host_outputs(self, inputs: Inputs) -> list[np.ndarray]:
        """Stage, run, and bring every output to the host (one step of a decoding loop)."""
        result = self.stage(inputs)()
        if self.device == "cpu":
            return list(result)
        self.sync()
        return self._binding.copy_outputs_to_cpu()


class OvBackend(StagedBackend):
    """OpenVINO compiled model with one infer request (the CPU plugin runs synchronously)."""

    def __init__(self, path: Path, device: str, threads: int | None) -> None:
        self.device, self.path = device, path
        self.compiled = openvino_model(path, device, threads)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.timer = Timer()

    def sync(self) -> None:
        """Nothing queued: ``infer`` returns when the outputs are written."""

    def stage(self, inputs: Inputs) -> Call:
        """Feed the inputs the model declares; return a call that runs it and copies its outputs out
        (as onnxruntime does), so a timed call costs what a server's does."""
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: no value for model input(s) {', '.join(missing)}")
        feed = {name: np.ascontiguousarray(inputs[name]) for name in self.input_names}
        return lambda: self.request.infer(feed)

    def host_outputs(self, inputs: Inputs) -> list[np.ndarray]:
        """Stage, run, and return every output in the model's order."""
        result = self.stage(inputs)()
        return [np.asarray(result[port]) for port in self.compiled.outputs]


Backend = TorchBackend | OrtBackend | OvBackend


def file_backend(fmt: Format, path: Path, names: tuple[list[str], list[str]], device: str, threads: int | None,
                strict_device: bool = True) -> Backend:
    """The backend for an artifact file of any format, the one place that knows how each is loaded (a torch
    file through pipeline.runtime.loaders, so nothing it holds runs). ``names``: the model's input and output
    names, for formats whose file does not carry them."""
    if fmt is Format.ONNX:
        return OrtBackend(path, device, threads, strict_device=strict_device)
    if fmt is Format.OPENVINO:
        return OvBackend(path, device, threads)
    if fmt is Format.TORCHSCRIPT:
        module = load_torchscript(path, map_location=torch_device(device))
    elif fmt is Format.TORCH_EXPORT:
        module = load_exported(path)
    else:
        raise ValueError(f"{path}: no backend runs a {fmt.value} artifact")
    return TorchBackend(module, names[0], device, output_names=names[1])
