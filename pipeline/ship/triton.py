"""A Triton Inference Server model repository for an ONNX model: config.pbtxt and the version folder.

The config is read off the ONNX graph itself (names, element types, shapes), so it cannot drift
from the file it serves. Triton's convention on batching: with ``max_batch_size > 0`` the batch
axis is left out of every ``dims`` and Triton adds it; that is only possible when axis 0 of every
input and output is dynamic. A model with a fixed batch axis gets ``max_batch_size: 0`` and its
full shapes, and no dynamic batcher.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from pipeline.core.errors import ArtifactError

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
VERSION = "1"
CONFIG = "config.pbtxt"
DEFAULT_MAX_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 100
INSTANCE_KIND = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}

# ONNX TensorProto element type -> Triton DataType (model_config.proto).
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, Triton data type, and full shape (-1 where dynamic)."""

    name: str
    data_type: str
    shape: tuple[int, ...]


def _shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)


def _spec(value: onnx.ValueInfoProto, where: Path) -> TensorSpec:
    elem = value.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        name = onnx.TensorProto.DataType.Name(elem) if elem else "unknown"
        raise ArtifactError(f"{where}: {value.name} has element type {name}, which Triton has no type for")
    shape = _shape(value)
    if shape is None:
        raise ArtifactError(f"{where}: the rank of {value.name} is unknown; Triton needs every tensor's dims")
    return TensorSpec(value.name, TRITON_TYPES[elem], shape)


def graph_io(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's real inputs (initializers excluded) and outputs, read without the weights."""
    model = onnx.load(str(model_path), load_external_data=False)
    if any(_shape(v) is None for v in model.graph.output):
        model = onnx.shape_inference.infer_shapes(model)
    weights = {init.name for init in model.graph.initializer}
    inputs = [_spec(v, model_path) for v in model.graph.input if v.name not in weights]
    outputs = [_spec(v, model_path) for v in model.graph.output]
    return inputs, outputs


def batchable(tensors: list[TensorSpec]) -> bool:
    """Whether Triton may batch: axis 0 of every tensor is dynamic."""
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)


def _tensor_block(key: str, tensors: list[TensorSpec], strip_batch: bool) -> list[str]:
    lines = [f"{key} ["]
    for i, tensor in enumerate(tensors):
        dims = list(tensor.shape[1:] if strip_batch else tensor.shape)
        reshape = strip_batch and not dims  # one scalar per request: dims [1], reshaped to [] (as Triton's autofill)
        lines += ["  {", f"    name: {json.dumps(tensor.name)}", f"    data_type: {tensor.data_type}",
                  f"    dims: [ {', '.join(str(d) for d in (dims or [1]))} ]"]
        if reshape:
            lines.append("    reshape: { shape: [ ] }")
        lines.append("  }," if i < len(tensors) - 1 else "  }")
    lines.append("]")
    return lines


def config_pbtxt(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], device: str = "cpu",
                 max_batch_size: int = DEFAULT_MAX_BATCH, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 instances: int = 1) -> str:
    """The text of config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    if device not in INSTANCE_KIND:
        raise ArtifactError(f"no Triton instance kind for device {device!r} (known: {', '.join(INSTANCE_KIND)})")
    batching = max_batch_size > 0 and batchable(inputs + outputs)
    lines = [f"name: {json.dumps(name)}", f'platform: "{PLATFORM}"',
             f"max_batch_size: {max_batch_size if batching else 0}"]
    lines += _tensor_block("input", inputs, batching)
    lines += _tensor_block("output", outputs, batching)
    if batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {INSTANCE_KIND[device]}", "  }", "]"]
    return "\n".join(lines) + "\n"


def write_repository(model_path: Path, repo_dir: Path, name: str, device: str = "cpu",
                     max_batch_size: int = DEFAULT_MAX_BATCH) -> Path:
    """Write ``repo_dir/<name>/config.pbtxt`` and version 1 of the model (files copied); returns the model folder.

    A model whose weights sit in an external ``.data`` file is stored the way Triton documents
    for multi-file ONNX models: as a folder ``1/model.onnx/`` holding ``model.onnx`` and its data.
    """
    inputs, outputs = graph_io(model_path)
    model_dir = repo_dir / name
    version = model_dir / VERSION
    data = model_path.with_name(model_path.name + ".data")
    target = version / MODEL_FILE if data.exists() else version
    target.mkdir(parents=True)
    shutil.copyfile(model_path, target / MODEL_FILE)
    if data.exists():
        shutil.copyfile(data, target / data.name)
    text = config_pbtxt(name, inputs, outputs, device, max_batch_size)
    (model_dir / CONFIG).write_text(text, encoding="utf-8")
    if max_batch_size > 0 and not batchable(inputs + outputs):
        log.warning("triton: axis 0 is not dynamic on every input and output of %s; max_batch_size 0, "
                    "no dynamic batching", model_path.name)
    return model_dir
