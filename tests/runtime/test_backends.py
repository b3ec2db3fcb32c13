"""The backend of each format: the device is asserted (no silent CPU fallback), inputs are staged on the
device before the timed call, and the backends agree on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import DeviceError
from pipeline.model.inputs import random_tokens
from pipeline.runtime.backends import OrtBackend, TorchBackend
from pipeline.runtime.sessions import onnx_session


def test_onnx_session_refuses_a_provider_it_does_not_have(tiny_onnx) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DeviceError, match="onnxruntime has no CUDAExecutionProvider"):
        onnx_session(tiny_onnx.path, "cuda")


def test_torch_backend_refuses_cuda_without_a_device(tiny_ctx) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        TorchBackend(tiny_ctx.model.load().module, tiny_ctx.io.input_names, "cuda")


def _gpu_backends(tiny_ctx, tiny_onnx) -> list:
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backends = [TorchBackend(tiny_ctx.model.load().module, tiny_ctx.io.input_names, "cuda")]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        backends.append(OrtBackend(tiny_onnx.path, "cuda", threads=2))
    return backends


def test_gpu_backends_stage_inputs_on_the_device_and_time_synchronized(tiny_ctx, tiny_onnx) -> None:
    inputs = random_tokens(tiny_ctx.io.input_names, 2, 16, 30522)
    for backend in _gpu_backends(tiny_ctx, tiny_onnx):
        call = backend.stage(inputs)
        assert backend.timer.time_ms(call) > 0
        backend.run_host(inputs)


def test_cpu_backends_match(tiny_ctx, tiny_onnx) -> None:
    inputs = random_tokens(tiny_ctx.io.input_names, 2, 16, 30522)
    torch_out = TorchBackend(tiny_ctx.model.load().module, tiny_ctx.io.input_names, "cpu").stage(inputs)()
    ort_out = OrtBackend(tiny_onnx.path, "cpu", threads=2).stage(inputs)()
    assert np.abs(torch_out[0].numpy() - ort_out[0]).max() < 1e-4
