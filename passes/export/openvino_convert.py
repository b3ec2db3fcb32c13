"""ONNX or the eager model -> OpenVINO IR (model.xml + model.bin), batch and sequence dynamic.

From ONNX, OpenVINO's ONNX frontend reads the file as it is (its dynamic axes stay dynamic); from
eager, openvino.convert_model traces the model's wrapper module and the declared axes are made
dynamic. Weights are stored in fp32 (``save_model`` would halve them to fp16 by default). The IR
is then run at the export shape and at a different one and compared with its parent (the ONNX
file in onnxruntime, or a fresh eager model).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from passes._support import onnx_io as ou
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import Inputs, IOSpec, Pass, PassConfig, PassContext, PassOutput
from pipeline.runtime.backends import OvBackend
from pipeline.runtime.runner import as_function

log = logging.getLogger(__name__)

FILE = "model.xml"
WEIGHTS = "model.bin"


class OpenVinoConvertConfig(PassConfig):
    """Options of the openvino_convert pass."""

    tolerance: float = Field(
        default=1e-3, gt=0, description="Largest absolute difference from the parent allowed in the check."
    )


class OpenVinoConvertPass(Pass):
    """Convert an ONNX file or the eager model to OpenVINO IR and check it against its parent."""

    name = "openvino_convert"
    consumes = frozenset({Format.ONNX, Format.EAGER})
    produces = Format.OPENVINO
    Config = OpenVinoConvertConfig

    def check(self, ctx: PassContext) -> None:
        """Refuse before anything runs when OpenVINO is not installed."""
        require_openvino(self.name)

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        import openvino as ov

        cfg: OpenVinoConvertConfig = self.config  # type: ignore[assignment]
        if parent.format is Format.EAGER:
            reference, inputs, expected = ou.fresh_reference(ctx)
            del reference
            model = convert_eager(ctx, inputs[0])
            precision = Precision.FP32
        elif parent.format is Format.ONNX and parent.path is not None:
            inputs = ou.inputs_to_check(ctx)
            expected = [ou.run_checked(parent.path, x) for x in inputs]
            model = ov.convert_model(str(parent.path))
            settle_names(model, ctx.io)
            precision = parent.precision
        else:
            raise ValueError(f"openvino_convert reads ONNX or the eager model, not a {parent.format.value} artifact")
        path = out_dir / FILE
        ov.save_model(model, str(path), compress_to_fp16=False)
        run = as_function(OvBackend(path, "cpu", None), ctx.io.output_names)
        diffs = ou.check_at_shapes(run, f"{FILE} in OpenVINO", inputs, expected, ctx.io.output_names, cfg.tolerance)
        stats: dict[str, Any] = {
            "source": parent.format.value, "ops": len(model.get_ordered_ops()),
            "op_histogram": op_histogram(model, top=15),
            "file_bytes": path.stat().st_size + (out_dir / WEIGHTS).stat().st_size,
            "check": [{"shape": ou.shape_text(x), "max_abs_diff": d} for x, d in zip(inputs, diffs, strict=True)],
        }
        log.info("openvino_convert: %d ops from %s", stats["ops"], parent.format.value)
        return PassOutput(file=FILE, meta={"precision": precision, "openvino": ov.__version__}, stats=stats)


def require_openvino(pass_name: str) -> None:
    """Raise RecipeError naming the pass when OpenVINO cannot be imported."""
    from pipeline.core.errors import RecipeError

    try:
        import openvino  # noqa: F401
    except ImportError:
        raise RecipeError(f"passes: {pass_name} needs OpenVINO, which is not installed here "
                          f"(pip install -e '.[openvino]'; make setup installs it on x86-64)") from None


def convert_eager(ctx: PassContext, example: Inputs) -> Any:
    """Trace the model's wrapper module with openvino.convert_model; name its inputs and outputs as
    the recipe does, with the declared axes dynamic."""
    import openvino as ov
    import torch

    io = ctx.io
    module = ctx.model.load().module.eval()
    args = tuple(torch.from_numpy(example[name]) for name in io.input_names)
    shapes = [dynamic_shape(io, name, example[name].shape) for name in io.input_names]
    with torch.no_grad():
        model = ov.convert_model(module, example_input=args, input=shapes)
    for port, name in zip(model.inputs, io.input_names, strict=True):
        port.get_tensor().set_names({name})
    if len(model.outputs) != len(io.output_names):
        raise ValueError(f"the converted model has {len(model.outputs)} outputs, the recipe names "
                         f"{len(io.output_names)} ({', '.join(io.output_names)})")
    for port, name in zip(model.outputs, io.output_names, strict=True):
        port.get_tensor().set_names({name})
    return model


def settle_names(model: Any, io: IOSpec) -> None:
    """Leave each input and output port with the recipe's name alone. OpenVINO's ONNX frontend drops a
    Cast to the type a tensor already has and gives the tensor the Cast's output name too; a port's
    ``get_any_name`` may then return that internal name (a decoder's ``attention_mask`` read as
    ``/Cast_1_output_0``), which no caller feeds."""
    for ports, declared in ((model.inputs, io.input_names), (model.outputs, io.output_names)):
        for port in ports:
            names = port.get_names() & set(declared)
            if len(names) == 1:
                port.get_tensor().set_names(names)


def dynamic_shape(io: IOSpec, name: str, shape: tuple[int, ...]) -> list[int]:
    """An input's shape with its declared dynamic axes as -1."""
    axes = io.dynamic_axes.get(name, {})
    return [-1 if axis in axes else size for axis, size in enumerate(shape)]


def op_histogram(model: Any, top: int | None = None) -> dict[str, int]:
    """Count of each operation type in an OpenVINO model."""
    counts = Counter(op.get_type_name() for op in model.get_ordered_ops())
    return dict(counts.most_common(top))
