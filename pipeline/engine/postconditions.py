"""What every step's output must satisfy, whatever pass wrote it; the manager checks it after
each step, the way torch.fx runs its checks after every pass, so passes do not repeat it.

For an ONNX file: onnx.checker accepts it; its outputs are the model's outputs, in order; its
inputs are among the model's inputs; and every axis the recipe declares dynamic is still
symbolic. A graph with an axis fixed to a number would fail at any other shape. What cannot be
seen statically (a size baked into a Reshape) is left to the numeric checks of the passes and
to the parity gate, which runs every artifact at shapes other than the export shape. An OpenVINO
IR is held to the same names and dynamic axes, read back by OpenVINO itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.artifact import Format
from pipeline.engine.pass_api import IOSpec

if TYPE_CHECKING:  # onnx is imported when an ONNX step is checked, so the engine loads fast
    import onnx

Dims = dict[str, list[int | str | None]]


def check_output(fmt: Format, path: Path, io: IOSpec) -> None:
    """Raise ValueError, saying what is wrong, unless the file a step wrote meets its format's post-conditions."""
    check = POSTCONDITIONS.get(fmt)
    if check is not None:
        check(path, io)


def check_onnx(path: Path, io: IOSpec) -> None:
    """onnx.checker, the model's input and output names, and the declared dynamic axes still symbolic."""
    import onnx

    onnx.checker.check_model(str(path))  # path-based, so it works for models over 2 GB
    model = onnx.load(str(path), load_external_data=False)
    outputs = [o.name for o in model.graph.output]
    if outputs != list(io.output_names):
        raise ValueError(f"graph outputs {outputs} != the model's outputs {list(io.output_names)}")
    extra = [i.name for i in model.graph.input if i.name not in io.input_names]
    if extra:
        raise ValueError(f"graph inputs {extra} are not among the model's inputs {list(io.input_names)}")
    baked = baked_axes(graph_dims(model), io.dynamic_axes)
    if baked:
        raise ValueError(f"dynamic axes are fixed sizes in the graph: {', '.join(baked)}{specialization_hint(io)}")


def specialization_hint(io: IOSpec) -> str:
    """Why an axis may have been fixed, when the export shape explains it (else empty)."""
    return (" (an export dimension of 1 is specialized; export with batch and sequence of 2 or more)"
            if 1 in (io.export_batch, io.export_seq) else "")


def check_openvino(path: Path, io: IOSpec) -> None:
    """OpenVINO reads the IR back; its names follow the model's, and the declared dynamic axes are dynamic."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    outputs = [port.get_any_name() for port in model.outputs]
    if outputs != list(io.output_names):
        raise ValueError(f"IR outputs {outputs} != the model's outputs {list(io.output_names)}")
    inputs = [port.get_any_name() for port in model.inputs]
    extra = [name for name in inputs if name not in io.input_names]
    if extra:
        raise ValueError(f"IR inputs {extra} are not among the model's inputs {list(io.input_names)}")
    dims: Dims = {port.get_any_name(): [dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()]
                  for port in [*model.inputs, *model.outputs]}
    baked = baked_axes(dims, io.dynamic_axes)
    if baked:
        raise ValueError(f"dynamic axes are fixed sizes in the IR: {', '.join(baked)}{specialization_hint(io)}")


def graph_dims(model: onnx.ModelProto) -> Dims:
    """Dims of every graph input and output: an int (fixed), a str (symbolic) or None (unknown)."""
    dims: Dims = {}
    for value in [*model.graph.input, *model.graph.output]:
        shape = value.type.tensor_type.shape
        dims[value.name] = [d.dim_param if d.HasField("dim_param") else
                            d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return dims


def baked_axes(dims: Dims, dynamic_axes: Mapping[str, Mapping[int, str]]) -> list[str]:
    """The declared dynamic axes that the graph has fixed to a number, as ``name[axis]=value``."""
    baked = []
    for name, axes in dynamic_axes.items():
        shape = dims.get(name, [])
        baked += [f"{name}[{axis}]={shape[axis]}" for axis in axes
                  if axis < len(shape) and isinstance(shape[axis], int)]
    return baked


POSTCONDITIONS: dict[Format, Callable[[Path, IOSpec], None]] = {Format.ONNX: check_onnx,
                                                                Format.OPENVINO: check_openvino}
