"""Runner: the one way to run a model. Any artifact (eager, TorchScript, torch.export, ONNX, OpenVINO) on a
device, behind one
callable from input arrays to output arrays; verification, the benchmark and the passes all use it.

A Runner's callable is a backend's (pipeline.runtime.backends) staged call with its outputs brought
to the host, so what is verified runs exactly as what is timed. The device asked for is asserted,
not assumed: an onnxruntime session that did not get the execution provider it asked for is an
error, never a silent CPU fallback. torch is imported only when a torch model runs, so an ONNX-only
caller (a graph pass, a benchmark worker of an ONNX artifact) stays free of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.artifact import Artifact, Format
from pipeline.model.inputs import Inputs
from pipeline.runtime.backends import Backend, OrtBackend, TorchBackend, file_backend

if TYPE_CHECKING:
    from pipeline.model.loading import ModelHandle

Outputs = dict[str, np.ndarray]
ModelFn = Callable[[Inputs], Outputs]



def as_function(backend: Backend, output_names: list[str]) -> ModelFn:
    """A callable that stages ``inputs``, runs the backend once and returns float32 outputs by name."""

    def run(inputs: Inputs) -> Outputs:
        values = backend.host_outputs(inputs)
        if len(values) != len(output_names):
            raise ValueError(f"the model returned {len(values)} outputs, expected {len(output_names)} "
                             f"({', '.join(output_names)})")
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(output_names, values, strict=True)}

    return run


def onnx_function(path: Path, device: str = "cpu", threads: int | None = None) -> ModelFn:
    """An ONNX file in an asserted onnxruntime session, as a callable (outputs by the graph's names)."""
    backend = OrtBackend(Path(path), device, threads, strict_device=False)
    return as_function(backend, backend.output_names)


def run_onnx(path: Path, inputs: Inputs, device: str = "cpu") -> Outputs:
    """Run an ONNX file once on named inputs (only those the graph declares are fed)."""
    return onnx_function(path, device)(inputs)


def run_module(module: Any, inputs: Inputs, input_names: list[str], output_names: list[str],
               device: str = "cpu") -> Outputs:
    """Run an eager (or TorchScript) module once on named inputs; outputs by ``output_names``."""
    return as_function(TorchBackend(module, input_names, device), output_names)(inputs)


class Runner:
    """Opens artifacts as callables from input arrays to output arrays; ``threads`` is what each onnxruntime
    or OpenVINO session gets (torch's count belongs to the process: pipeline.runtime.threads)."""

    def __init__(self, handle: ModelHandle, device: str = "cpu", threads: int | None = None) -> None:
        self.handle = handle
        self.device = device
        self.threads = threads

    def open_eager(self) -> ModelFn:
        """A callable running a freshly loaded eager model."""
        backend = TorchBackend(self.handle.load().module, self.handle.input_names, self.device)
        return as_function(backend, self.handle.output_names)

    def open(self, artifact: Artifact) -> ModelFn:
        """A callable running ``artifact``; the eager source loads a fresh model."""
        if artifact.format is Format.EAGER:
            return self.open_eager()
        assert artifact.path is not None
        backend = file_backend(artifact.format, artifact.path, (self.handle.input_names, self.handle.output_names),
                             self.device, self.threads, strict_device=False)
        return as_function(backend, backend.output_names)
