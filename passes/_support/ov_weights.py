"""int8 weights with activations quantized per group of each row at run time (OpenVINO's CPU plugin).

``nncf.compress_weights`` stores a MatMul's constant weights in int8 (asymmetric, per output channel);
the CPU plugin then quantizes the activations feeding such a MatMul dynamically, one scale per group
of ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` channels of each row. Nothing is shared across rows or with the
padding, so a row's output does not depend on its batch-mates. The group size is a compile option: it is
written into the IR's ``runtime_options``, which ``compile_model`` applies by itself, so every reader of
the file (the gate, the benchmark, a deployment, optimum-intel) runs what was checked.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.core.errors import RecipeError

GROUP_OPTION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
RUNTIME_OPTIONS = "runtime_options"
GROUP_SIZES = (64, 32)  # tried in this order: the larger group is faster, the smaller more exact


def fp32_ir(parent: Artifact, pass_name: str) -> Path:
    """The parent's IR file; ValueError naming ``pass_name`` when the parent is no fp32 OpenVINO IR."""
    if parent.format is not Format.OPENVINO or parent.path is None or parent.precision is not Precision.FP32:
        raise ValueError(f"{pass_name} reads an fp32 OpenVINO IR, not a {parent.precision} "
                         f"{parent.format.value} artifact")
    return parent.path


def require_nncf(pass_name: str) -> None:
    """RecipeError naming the pass when NNCF is not installed."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise RecipeError(f"passes: {pass_name} needs NNCF, which is not installed here "
                          "(pip install -e '.[openvino]'; make setup installs it on x86-64)") from None


def decline_telemetry() -> None:
    """Stop NNCF's usage telemetry for this process (nothing is written to disk). It sends each event
    from a forked child: a fork of a process running OpenVINO's and torch's thread pools, which can
    hang, and which inherits this run's SIGTERM handler, so the telemetry's own terminate() leaves it
    running, holding the run's output pipes after the run ends."""
    from openvino_telemetry import Telemetry

    Telemetry().consent = False  # a singleton: the instance NNCF made when it was imported


def compress_int8(model: Any, names: list[str] | None = None) -> Any:
    """``model`` with the constant weights of its float MatMuls in int8 (INT8_ASYM); with ``names``, only
    those MatMuls'. MatMuls NNCF already quantized (FakeQuantize on their inputs) are left as they are."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    decline_telemetry()
    ignored = None
    if names is not None:
        others = [op.get_friendly_name() for op in model.get_ordered_ops()
                  if op.get_type_name() == "MatMul" and op.get_friendly_name() not in set(names)]
        ignored = nncf.IgnoredScope(names=others) if others else None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def set_group_size(model: Any, group: int) -> None:
    """Write the dynamic quantization group size into the IR's runtime options."""
    model.set_rt_info(str(group), [RUNTIME_OPTIONS, GROUP_OPTION])


def runtime_options(model: Any) -> dict[str, str]:
    """The compile options an IR carries (``runtime_options`` of its rt_info)."""
    if not model.has_rt_info([RUNTIME_OPTIONS]):
        return {}
    options = model.get_rt_info()[RUNTIME_OPTIONS]
    options = options.astype(dict) if hasattr(options, "astype") else options
    return {str(key): str(value.astype(str) if hasattr(value, "astype") else value)
            for key, value in dict(options).items()}


def compressed_matmuls(model: Any) -> list[str]:
    """MatMuls whose weights are stored in int8 and whose activations no FakeQuantize feeds: the ones the
    CPU plugin quantizes dynamically (a statically quantized MatMul has a FakeQuantize in front)."""
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        sources = [port.get_source_output().get_node() for port in op.inputs()]
        if any(node.get_type_name() == "FakeQuantize" for node in sources):
            continue
        if any(_from_int8_constant(node) for node in sources):
            found.append(op.get_friendly_name())
    return found


def _from_int8_constant(node: Any, depth: int = 4) -> bool:
    """Whether an int8 or uint8 Constant lies at most ``depth`` nodes up (Convert, Subtract, Multiply)."""
    if node.get_type_name() == "Constant":
        return str(node.get_element_type()) in ("<Type: 'int8_t'>", "<Type: 'uint8_t'>", "i8", "u8")
    if depth == 0 or node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape"):
        return False
    return any(_from_int8_constant(port.get_source_output().get_node(), depth - 1) for port in node.inputs())
