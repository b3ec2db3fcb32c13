"""matmul_nbits: weight-only block quantization with onnxruntime's MatMulNBits contrib op.

Each MatMul with a constant 2-D weight becomes ``com.microsoft::MatMulNBits``: the weight is stored in
4 or 8 bits, one scale (and, asymmetric, one zero point) per block of ``block_size`` values along K.
With ``accuracy_level`` 4 the CPU kernel computes in int8: it quantizes the activations per block of each
row at run time, so a row's output does not depend on its batch-mates, unlike int8_dynamic, whose
activation scale spans the whole batch.

``algorithm`` picks how onnxruntime 1.32's ``matmul_nbits_quantizer`` finds the scales (none needs a
package beyond onnxruntime; HQQ uses torch):

- ``rtn``: round to nearest (``DefaultWeightOnlyQuantConfig``, a C++ kernel: seconds), symmetric or not.
- ``k_quant``: llama.cpp's k-quant search (``KQuantWeightOnlyQuantConfig``, numpy inside onnxruntime's copy
  of Intel Neural Compressor): per block, 20 candidate scales weighted by the values' magnitudes; always
  asymmetric (uint8 zero points), slower to build (SmolLM2-135M: about a minute).
- ``hqq``: half-quadratic quantization (``HQQWeightOnlyQuantConfig``): the zero point of each block is fitted
  by a proximal solver and stored in float. onnxruntime's fast CPU kernels take uint8 zero points only: with
  float ones each call dequantizes every weight first, which makes decoding many times slower (measured below);
  at 8 bits they do not run at all, so hqq takes 4 bits only.

- ``grid``: for weights that already lie on a grid of blocks of 32 (a model read from a GGUF file: Q4_0, Q4_1,
  Q8_0), that grid, found in the weights and stored exactly (``passes/_support/weight_grid.py``): no second
  rounding. 4-bit grids take 4 bits, 8-bit grids 8 (at ``bits: 8`` every grid takes 8); a weight on no grid is
  quantized by rtn at ``bits`` and named in the manifest (``grid.requantized``). ``block_size`` applies to those.
  Q4_1's float minimum is carried by a block-sum term (see ``weight_grid``).

GPTQ (``GPTQWeightOnlyQuantConfig``) runs too, with calibration inputs, but is not offered: on SmolLM2-135M it
took 520 s on a loaded 2-core machine (one forward pass per MatMul input and sample) for min logits cosine 0.950,
against 0.946 for rtn.

The output projection (the MatMul that makes the ``logits`` output, found by walking the graph back from that
output) is quantized at ``bits`` with ``lm_head: true`` (the default) or kept in float. The input embedding
(the largest Gather of a 2-D constant table by a graph input) is kept in float by default; with ``embedding:
true`` it becomes ``GatherBlockQuantized`` with uint8 data of ``bits`` bits per value (blocks along the
hidden axis), written here, because the quantizer's own Gather path writes int4 tensors and raises the model
to opset 21 without converting its nodes (an opset-17 export then fails to load: ReduceMean's axes). A table
that other nodes read as well (tied to the output projection inside the graph) stays in float: quantizing
it would store it twice. The torchscript export writes a tied lm_head as its own transposed initializer.

With ``repair: true`` at 4 bits, the nodes the repair keeps take 8 bits (``repair_to: 8``, rtn, symmetric)
or stay in float (``repair_to: float``); at 8 bits they stay in float. Few candidates (an encoder) are chosen
by forward selection (a build per candidate to rank them); many (a decoder) in the order the first build's
localised error gives, which needs no build to rank. The manifest lists each weight node under "4", "8" or
"float" (``weight_nodes``) and the repair's nodes with where they went (``repaired``).

The artifact's precision is "int4" for 4 bits (some nodes may hold 8 bits or float) and "int8" for 8 bits.

onnxsim turns MatMul + Add into Gemm, which the quantizer skips: read the unsimplified export
(``from: onnx_export``) or the fused graph (``from: ort_optimize``, whose Attention stays fp32).

On all-MiniLM-L6-v2's fused graph, min per-token cosine to eager: 8 bits, blocks of 32, symmetric 0.99887,
asymmetric 0.99891 (so symmetric is the default: no zero points to store), blocks of 64 0.99803,
accuracy_level 1 (fp32 compute) 0.99966; the unfused export 0.99842; 4 bits 0.921 symmetric, 0.936
asymmetric (``symmetric: false`` pays off at 4 bits). A row alone and in a padded batch gave the same
output to the bit at every setting (int8_dynamic: cosine 0.953).

SmolLM2-135M (GGUF Q4_1, so its weights already lie on a 4-bit grid of blocks of 32 with a float minimum),
against the fp32 export (622 MB; decode step 32.7 ms at batch 1, past 20, 2 threads without spinning, on a
2-core Xeon): greedy tokens equal to eager's over 32 prompts (each up to its first difference, of 934), held-out
perplexity increase, decode step, size; blocks of 32 unless said.

    8 bits rtn symmetric          493  +0.86%   18.3 ms  254 MB   (random-token prefill min cosine 0.9993)
      output projection float     538  +0.69%   20.8 ms  331 MB
      embedding 8 bits            371  +0.98%            176 MB
    4 bits rtn asymmetric          45  +34.2%   15.4 ms  192 MB   (0.946)
      symmetric                    85  +25.7%   15.1 ms  190 MB   (0.937)
      asymmetric, blocks 64 / 128  56 / 58  +43.5% / +43.4%  - / 14.0 ms
      output projection float      72  +24.1%   18.6 ms  282 MB   (0.951)
      embedding 4 bits             45  +36.4%   15.0 ms  101 MB
    4 bits k_quant                 29  +35.7%   15.2 ms  192 MB   (0.944)
    4 bits hqq                     94   +8.5%    145 ms  206 MB   (0.993; rounded to uint8 zero points 0.928)

    4 bits grid (the file's Q4_1)  934  +0.00%   23.3 ms  307 MB   accuracy_level 1, output projection float
      accuracy_level 4              374           21.3 ms            (int8 compute quantizes the activations)
      output projection 8 bits      670                              (its Q8_0 grid, at accuracy_level 4)
      both at accuracy_level 4      340           18.6 ms
    (grid decode steps after 64 cached positions; 8 bits at accuracy_level 1 on the output projection alone made
    a step 108 ms)

Outside ``grid``, no 4-bit build keeps the int4 gate's 90% of tokens on it; hqq comes closest in perplexity, at
ten times rtn's decode time. With ``repair: true`` the localised order put the output projection first (to 8
bits), which left the gate's min cosine (over cases with a random cache, -0.07) where it was: the repair stopped
for want of progress.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from pydantic import Field, field_validator, model_validator

from passes._support.node_selection import select_nodes
from passes._support.onnx_io import (
    EXTERNAL_THRESHOLD,
    files_bytes,
    has_external_data,
    load_model,
    model_file,
    save_model,
    weight_bytes,
)
from passes._support.weight_grid import grid_offsets, pack_codes, place_grids
from passes.repair.localize import rank_nodes
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.search import RepairStrategy
from passes.repair.strategies import ForwardSelection, RankedGrowth
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import PassContext, PassOutput
from pipeline.model.inputs import Inputs

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

log = logging.getLogger(__name__)

Algorithm = Literal["rtn", "k_quant", "hqq", "grid"]
FORWARD_SELECTION_MAX = 32  # more candidates than this are ranked by localised error, not a build each
# ops between the output projection and the logits output: one non-constant input each (bias, scale, cast)
PASS_THROUGH = frozenset({"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Add", "Sub", "Mul",
                          "Div", "Tanh"})


class MatMulNBitsConfig(RepairOptions):
    """Options of onnxruntime's MatMulNBitsQuantizer, and which of the model's ends it quantizes."""

    bits: Literal[4, 8] = Field(default=8, description="Bits per weight: 8 (close to fp32) or 4 (half the size, "
                                                       "far less accurate).")
    block_size: int = Field(default=32, description="Weights per scale along K: a power of two, 16 to 256.")
    symmetric: bool = Field(default=True, description="No zero points; at 8 bits as accurate as asymmetric. "
                                                      "k_quant and hqq are asymmetric: set false for them.")
    accuracy_level: int = Field(default=4, ge=0, le=4, description="MatMulNBits' compute type on CPU: 4 = int8 "
                                "(activations quantized per block of each row), 1 = fp32, 0 = the kernel's default.")
    algorithm: Algorithm = Field(default="rtn", description="rtn: round to nearest (seconds); k_quant: "
                                 "llama.cpp's scale search (minutes); hqq: fitted float zero points (accurate, "
                                 "but onnxruntime's CPU kernel runs them slowly); grid: the 4- or 8-bit grid of "
                                 "blocks of 32 the weights already lie on (a GGUF source's), stored exactly, "
                                 "and rtn for weights on none.")
    lm_head: bool = Field(default=True, description="Quantize the output projection (the MatMul that makes the "
                                                    "logits) at `bits`; false keeps it in float.")
    embedding: bool = Field(default=False, description="Quantize the input embedding table at `bits` "
                                                       "(GatherBlockQuantized); false keeps it in float.")
    repair_to: Literal[8, "float"] = Field(default=8, description="Where a node the repair takes out of 4 bits "
                                           "goes: 8 bits or float (at bits 8: float).")
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="MatMuls left in float: names or globs ('*layer.*[0-9]/output/dense/MatMul')."
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value > 256 or value & (value - 1):
            raise ValueError(f"block_size must be a power of two from 16 to 256, not {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MatMulNBitsConfig:
        if self.algorithm in ("k_quant", "hqq") and self.symmetric and "symmetric" in self.model_fields_set:
            raise ValueError(f"algorithm {self.algorithm} is asymmetric (zero points of its own): "
                             "drop symmetric: true")
        if self.algorithm == "hqq" and self.bits == 8:
            raise ValueError("algorithm hqq: 4 bits only (onnxruntime's CPU kernel takes no float zero points at 8)")
        if self.bits == 8 and self.repair_to == 8 and "repair_to" in self.model_fields_set:
            raise ValueError("repair_to 8: bits is 8 already; its repair keeps nodes in float (repair_to: float)")
        return self

    @property
    def zero_points(self) -> bool:
        """Whether the weights carry zero points (asymmetric)."""
        return self.algorithm in ("k_quant", "hqq") or not self.symmetric


READ_INSTEAD = "quantize the unsimplified export or the fused graph (`from: onnx_export` or `from: ort_optimize`)"


def weight_nodes_of(model: onnx.ModelProto, op_type: str) -> dict[str, str]:
    """Nodes of ``op_type`` whose second input is a 2-D initializer (for MatMul: what the quantizer
    converts). Name -> op type."""
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    return {node.name: node.op_type for node in model.graph.node
            if node.op_type == op_type and len(node.input) > 1 and weights.get(node.input[1]) == 2}


def no_candidates_message(model: onnx.ModelProto, step: str) -> str:
    """Why ``model`` has nothing to quantize, and which parent to read instead."""
    gemms = sum(node.op_type == "Gemm" for node in model.graph.node)
    held = f" (it holds {gemms} Gemm, which MatMulNBits does not take: onnxsim turns MatMul + Add into Gemm)" \
        if gemms else ""
    return f"matmul_nbits: {step} has no MatMul with a constant 2-D weight{held}; {READ_INSTEAD}"


def output_projection(model: onnx.ModelProto) -> str | None:
    """The weight MatMul that makes the ``logits`` output (else the first output), through ops that pass one
    tensor on (a bias, a scale, a cast); None when another op comes first."""
    producers = {out: node for node in model.graph.node if node.op_type != "Constant" for out in node.output}
    weights = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    outputs = [o.name for o in model.graph.output]
    name: str | None = "logits" if "logits" in outputs else outputs[0]
    while name is not None and (node := producers.get(name)) is not None:
        if node.op_type == "MatMul":
            return node.name if node.input[1] in weights else None
        produced = [i for i in node.input if i in producers]
        if node.op_type not in PASS_THROUGH or len(produced) != 1:
            return None
        name = produced[0]
    return None


def input_embedding(model: onnx.ModelProto) -> str | None:
    """The Gather that looks a graph input up in the largest 2-D constant table (the token embedding)."""
    tables = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2}
    inputs = {i.name for i in model.graph.input}
    lookups = [node for node in model.graph.node
               if node.op_type == "Gather" and node.input[0] in tables and node.input[1] in inputs]
    return max(lookups, key=lambda node: tables[node.input[0]]).name if lookups else None


def table_readers(model: onnx.ModelProto, gather: str) -> list[str]:
    """Nodes other than ``gather`` that read its table."""
    table = next(node.input[0] for node in model.graph.node if node.name == gather)
    return [node.name for node in model.graph.node if node.name != gather and table in node.input]


def block_quantize_rows(table: np.ndarray, bits: int, block: int, symmetric: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``table`` (rows x columns) in blocks of ``block`` along each row: (uint8 data, packed two to a byte at
    4 bits, scales, uint8 zero points packed the same or None), as GatherBlockQuantized reads them."""
    rows, cols = table.shape
    blocks = -(-cols // block)
    padded = np.zeros((rows, blocks * block), np.float32)
    padded[:, :cols] = table
    values = padded.reshape(rows, blocks, block)
    top, middle = 2**bits - 1, 2 ** (bits - 1)
    low, high = values.min(axis=-1), values.max(axis=-1)
    if symmetric:  # the value of largest magnitude maps to -2^(bits-1), as onnxruntime's own quantizer does
        scale, zero = np.where(np.abs(high) > np.abs(low), high, low) / -middle, np.full(low.shape, middle)
    else:
        low, high = np.minimum(low, 0), np.maximum(high, 0)
        scale = (high - low) / top
        zero = np.clip(np.round(-low / np.where(scale == 0, 1, scale)), 0, top)
    steps = np.where(scale == 0, 1, scale)[..., None]
    data = np.clip(np.round(values / steps) + zero[..., None], 0, top).astype(np.uint8).reshape(rows, -1)[:, :cols]
    zeros = None if symmetric else pack_codes(zero.astype(np.uint8), bits)
    return pack_codes(data, bits), scale.astype(table.dtype), zeros


def quantize_embedding(model: onnx.ModelProto, gather: str, bits: int, block: int, symmetric: bool) -> None:
    """Replace the Gather ``gather`` (axis 0, its table read by no other node) by GatherBlockQuantized, in place."""
    import onnx

    graph = model.graph
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.name == gather)
    table = next(t for t in graph.initializer if t.name == node.input[0])
    data, scales, zeros = block_quantize_rows(onnx.numpy_helper.to_array(table), bits, block, symmetric)
    names = [f"{table.name}_Q{bits}", node.input[1], f"{table.name}_scales"]
    added = [onnx.numpy_helper.from_array(data, names[0]), onnx.numpy_helper.from_array(scales, names[2])]
    if zeros is not None:
        names.append(f"{table.name}_zero_points")
        added.append(onnx.numpy_helper.from_array(zeros, names[3]))
    graph.initializer.remove(table)
    graph.initializer.extend(added)
    graph.node.remove(node)
    graph.node.insert(index, onnx.helper.make_node(
        "GatherBlockQuantized", names, list(node.output), name=f"{gather}_Q{bits}", domain="com.microsoft",
        bits=bits, block_size=block, gather_axis=0, quantize_axis=1))
    _import_contrib_domain(model)


def _import_contrib_domain(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft domain of the contrib ops (onnxruntime's k-quant path leaves it out)."""
    import onnx

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def _algo_config(config: MatMulNBitsConfig, bits: int, names: list[str]) -> Any:
    """onnxruntime's config object for ``config.algorithm`` at ``bits`` over the MatMuls ``names``."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    level = config.accuracy_level or None
    if config.algorithm == "k_quant":  # its per-node template says 4 bits
        return nbits.KQuantWeightOnlyQuantConfig(customized_weight_config={name: {"bits": bits} for name in names})
    if config.algorithm == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=bits)
    return nbits.DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                              accuracy_level=level, bits=bits)


def quantize_matmuls(model: onnx.ModelProto, config: MatMulNBitsConfig, bits: int, keep: set[str]
                     ) -> onnx.ModelProto:
    """``model`` with every weight MatMul not in ``keep`` as MatMulNBits of ``bits`` bits (MatMulNBits and
    other ops are left as they are)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    names = [name for name in weight_nodes_of(model, "MatMul") if name not in keep]
    if not names:
        return model
    level = config.accuracy_level or None
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=config.block_size,
                                     is_symmetric=not config.zero_points, accuracy_level=level,
                                     nodes_to_exclude=sorted(keep), algo_config=_algo_config(config, bits, names))
    with contextlib.redirect_stdout(io.StringIO()):  # the k-quant path prints a progress bar
        quantizer.process()
    quantized = cast("onnx.ModelProto", quantizer.model.model)
    if config.algorithm == "hqq" and level:  # its nodes carry no accuracy_level
        _set_accuracy_level(quantized, level)
    _import_contrib_domain(quantized)
    return quantized


def _set_accuracy_level(model: onnx.ModelProto, level: int) -> None:
    """Give every MatMulNBits without an accuracy_level this one."""
    import onnx

    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and all(a.name != "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


@dataclass(frozen=True)
class NBitsQuantize:
    """One build: MatMuls (and the ``embedding`` Gather, when given) at ``config.bits``, but ``excluded`` in
    float and ``kept`` (the repair's) at 8 bits or in float as ``config.repair_to`` says. A module-level
    class, so that a repair can run its builds in worker processes."""

    model_path: Path
    config: MatMulNBitsConfig
    excluded: tuple[str, ...]
    external: bool
    embedding: str | None = None

    def __call__(self, target: Path, kept: list[str]) -> None:
        config = self.config
        eight = set(kept) if config.bits == 4 and config.repair_to == 8 else set()
        in_float = set(self.excluded) | (set(kept) - eight)
        model = load_model(self.model_path)
        if eight:
            rtn = config.model_copy(update={"algorithm": "rtn", "symmetric": True})
            model = quantize_matmuls(model, rtn, 8, keep=set(weight_nodes_of(model, "MatMul")) - eight)
        if config.algorithm == "grid":
            names = [name for name in weight_nodes_of(model, "MatMul") if name not in in_float]
            place_grids(model, names, config.bits, config.accuracy_level)
            _import_contrib_domain(model)
            rtn = config.model_copy(update={"algorithm": "rtn"})
            model = quantize_matmuls(model, rtn, config.bits, keep=in_float | grid_offsets(model))
        else:
            model = quantize_matmuls(model, config, config.bits, keep=in_float)
        if self.embedding is not None and self.embedding not in in_float:
            bits = 8 if self.embedding in eight else config.bits
            quantize_embedding(model, self.embedding, bits, config.block_size, not config.zero_points)
        save_model(model, target, self.external)


def weight_nodes_by_bits(model: onnx.ModelProto, weights: list[str]) -> dict[str, list[str]]:
    """The parent's weight nodes ``weights`` by what they hold in ``model``: "4", "8" (bits) or "float"."""
    bits = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            width = next(a.i for a in node.attribute if a.name == "bits")
            bits[node.name.removesuffix(f"_Q{width}")] = str(width)
    groups: dict[str, list[str]] = {"4": [], "8": [], "float": []}
    for name in weights:
        groups[bits.get(name, "float")].append(name)
    return groups


def nbits_counts(model: onnx.ModelProto, candidates: dict[str, str]) -> dict[str, int]:
    """MatMuls that became MatMulNBits (all, 4-bit, 8-bit), and weight MatMuls that stayed float."""
    ops = {node.name: node.op_type for node in model.graph.node}
    widths = [next(a.i for a in node.attribute if a.name == "bits")
              for node in model.graph.node if node.op_type == "MatMulNBits"]
    return {"matmul_nbits": len(widths), "matmul_nbits_4bit": widths.count(4), "matmul_nbits_8bit": widths.count(8),
            "float_matmuls": sum(ops.get(name) == "MatMul" for name in candidates)}


def localized_rank(first: Path, parent: Path, probe: Inputs, names: set[str]) -> list[dict[str, Any]]:
    """The candidates by the error each adds in the first build (localised against the parent), most first;
    those the localisation did not reach last."""
    rows = [node.to_json() for node in rank_nodes(first, parent, probe, names)]
    ranked = {row["node"] for row in rows}
    return rows + [{"node": name, "op_type": None} for name in sorted(names - ranked)]


def repair_strategy(candidates: int) -> RepairStrategy:
    """Forward selection for few candidates (a build each to rank them); the localised order for many."""
    return ForwardSelection() if candidates <= FORWARD_SELECTION_MAX else RankedGrowth(localized_rank)


@dataclass(frozen=True)
class Ends:
    """The model's ends as this config treats them: the output projection and input embedding found in the
    graph, which of them are quantized, and what to warn about."""

    lm_head: str | None
    embedding: str | None
    embedding_quantized: bool
    warnings: tuple[str, ...]

    @classmethod
    def of(cls, model: onnx.ModelProto, config: MatMulNBitsConfig) -> Ends:
        """Find the ends of ``model`` and check the config's wishes against them."""
        lm_head, embedding, warnings = output_projection(model), input_embedding(model), []
        if config.lm_head is False and lm_head is None:
            warnings.append("lm_head: false, but no MatMul makes the model's output: nothing kept in float for it")
        quantized = config.embedding and embedding is not None
        if config.embedding and embedding is None:
            warnings.append("embedding: true, but no Gather looks a graph input up in a constant table")
        elif quantized and (readers := table_readers(model, cast(str, embedding))):
            warnings.append(f"embedding: its table is also read by {readers[0]!r}; it stays in float (quantizing "
                            "it would store it twice)")
            quantized = False
        return cls(lm_head, embedding, quantized, tuple(warnings))


class MatMulNBitsPass(RepairingPass):
    """Quantize an fp32 ONNX model's MatMul weights to 8 (or 4) bits per block, as MatMulNBits."""

    name = "matmul_nbits"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = MatMulNBitsConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the block-quantized model to ``out_dir/model.onnx``."""
        config = cast(MatMulNBitsConfig, self.config)
        parent_path = model_file(parent, "matmul_nbits", fp32=True)
        source = load_model(parent_path, with_data=False)
        found = weight_nodes_of(source, "MatMul")
        if not found:
            raise ValueError(no_candidates_message(source, parent.step_folder))
        ends = Ends.of(source, config)
        excluded = select_nodes(source, config.nodes_to_exclude, "nodes_to_exclude")
        in_float = [*excluded, *([ends.lm_head] if ends.lm_head and not config.lm_head else [])]
        candidates = {name: op for name, op in found.items() if name not in in_float}
        if ends.embedding_quantized:
            candidates[cast(str, ends.embedding)] = "Gather"
        external = has_external_data(source) or weight_bytes(source) >= EXTERNAL_THRESHOLD
        convert = NBitsQuantize(parent_path, config, tuple(dict.fromkeys(in_float)), external,
                                ends.embedding if ends.embedding_quantized else None)
        precision = Precision.INT4 if config.bits == 4 else Precision.INT8
        repaired, warnings = convert_with_repair(ctx, parent_path, out_dir, precision.value, convert, candidates,
                                                 config, repair_strategy(len(candidates)), parallel=True)
        out = out_dir / "model.onnx"
        model = load_model(out, with_data=False)
        weights = [*found, *([ends.embedding] if ends.embedding else [])]
        stats = {**_stats(source, model, found, len(excluded)), "lm_head": ends.lm_head,
                 "embedding": ends.embedding, "weight_nodes": weight_nodes_by_bits(model, weights), **repaired}
        if config.algorithm == "grid":
            stats["grid"] = grid_record(model, list(candidates))
        if repaired:
            kept = [row["node"] for row in repaired["repair"]["kept_in_float"]]
            stats["repaired"] = {"to": 8 if config.bits == 4 and config.repair_to == 8 else "float", "nodes": kept}
        stats.update(bytes_before=files_bytes(parent_path), bytes_after=files_bytes(out))
        _log(stats, config)
        warnings = [*ends.warnings, *warnings, *_warnings(stats, config)]
        meta = {"precision": precision, "weight_bits": config.bits, "block_size": config.block_size}
        return PassOutput(file=out.name, meta=meta, stats=stats, warnings=warnings)


def _stats(source: onnx.ModelProto, model: onnx.ModelProto, found: dict[str, str], excluded: int) -> dict[str, Any]:
    """Counts for the manifest: quantized and float MatMuls, Gemms (never quantized), excluded nodes, nodes."""
    return {**nbits_counts(model, found), "float_gemms": len(weight_nodes_of(model, "Gemm")),
            "excluded_nodes": excluded, "nodes_before": len(source.graph.node), "nodes_after": len(model.graph.node)}


def _log(stats: dict[str, Any], config: MatMulNBitsConfig) -> None:
    groups = stats["weight_nodes"]
    log.info("matmul_nbits (%s, %d bits): %d weight nodes at 4 bits, %d at 8, %d in float (%d Gemms); "
             "%d -> %d bytes", config.algorithm, config.bits, len(groups["4"]), len(groups["8"]),
             len(groups["float"]), stats["float_gemms"], stats["bytes_before"], stats["bytes_after"])


def grid_record(model: onnx.ModelProto, candidates: list[str]) -> dict[str, Any]:
    """For the manifest: how many candidates were stored on their grid (and how many of those carry a block-sum
    term), and which were quantized by rtn because their weight lies on no grid."""
    placed = {node.name.rsplit("_Q", 1)[0]: len(node.input) > 3 for node in model.graph.node
              if node.op_type == "MatMulNBits" and node.input[1].endswith("_grid_codes")}
    return {"exact": len(placed), "asymmetric": sum(placed.values()),
            "requantized": [name for name in candidates if name not in placed]}


def _warnings(stats: dict[str, Any], config: MatMulNBitsConfig) -> list[str]:
    """What the counts say went wrong: nothing quantized, Gemms left in float, slow 8-bit nodes, weights that
    lay on no grid."""
    warnings = [] if stats["matmul_nbits"] else ["nothing was quantized (check nodes_to_exclude)"]
    if stats["matmul_nbits_8bit"] and config.accuracy_level == 1:
        warnings.append(f"{stats['matmul_nbits_8bit']} MatMulNBits at 8 bits with accuracy_level 1: onnxruntime's "
                        "CPU kernel computes 8-bit weights in fp32 many times slower than at accuracy_level 4")
    if (requantized := stats.get("grid", {}).get("requantized")):
        warnings.append(f"algorithm grid: {len(requantized)} weights lie on no grid of blocks of 32 and were "
                        f"quantized by rtn (first: {requantized[0]})")
    if stats["float_gemms"]:
        warnings.append(f"{stats['float_gemms']} Gemm with a weight stay float (MatMulNBits takes MatMuls only); "
                        f"{READ_INSTEAD}")
    return warnings
