"""The targets of a decoder peers run, built and judged: eager transformers (the reference),
onnxruntime-genai's builds (judged here through the right-padding adapter), optimum-intel's exports
(built and run in .venv-intel, judged here) and this project's shipped artifact (through its runner)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.decoder_arrays import load_outputs
from benchmarks.decoder_build import (
    gate_cases,
    genai_peer,
    genai_version,
    hf_folder,
    intel_peers,
    shipped_target,
)
from benchmarks.decoder_gate import PRESETS, decoding_metrics, right_padded, step_outputs, verdicts
from benchmarks.peer_build import INTEL_PYTHON, reason
from benchmarks.peer_table import Target
from pipeline.core.artifact import Artifact, Format
from pipeline.core.versions import library_versions
from pipeline.model.cache import CacheLayout, cache_layout
from pipeline.run.prepare import Prepared
from pipeline.runtime.runner import Runner, onnx_function
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.perplexity import perplexity
from pipeline.verify.reference import reference

log = logging.getLogger("benchmarks.peers")


@dataclasses.dataclass
class Gate:
    """What every target's gate needs: the cases, the cache layout, the tokens per prompt, the presets."""

    cases: list[Case]
    layout: CacheLayout
    new_tokens: int
    tolerances: dict[str, Any]
    threads: int


def eager_cases(prepared: Prepared, work: Path) -> list[Case]:
    """The recipe's eager reference, prompts and windows: the recipe run's own when it is still valid (a
    copy is read, never written), else computed into ``work`` with the recipe's code and settings."""
    recipe = prepared.recipe
    folder, ran = work / "reference", prepared.out_dir / "reference"
    if (ran / "manifest.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(ran, folder)
    cases = reference(recipe, prepared.model, folder, prepared.ctx.base_dir, recipe.device)
    return gate_cases(cases)


def judge(target: Target, tokens: list[Any], windows: list[Any], gate: Gate) -> None:
    """The target's token match and perplexity against eager's, and its verdict under each preset."""
    metrics = decoding_metrics(gate.cases, tokens, windows)
    target.parity = {"metrics": metrics, "verdicts": verdicts(metrics, gate.tolerances)}


def judge_steps(target: Target, fn: Any, gate: Gate) -> None:
    """The gate of a model that runs one step at a time, here."""
    start = time.perf_counter()
    try:
        tokens, windows = step_outputs(fn, gate.cases, gate.layout, gate.new_tokens)
    except Exception as exc:  # a model that cannot decode is a result: the table shows the reason
        target.error = f"greedy decoding does not run: {reason(exc)}"
        return
    judge(target, tokens, windows, gate)
    target.stats["gate_seconds"] = time.perf_counter() - start


def onnx_weights(folder: Path) -> str:
    """What the model builder made of the weights: MatMulNBits' bits, block and accuracy level."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    if not nodes:
        return "fp32 MatMul"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    embed = "quantized embeddings" if any(n.op_type == "GatherBlockQuantized" for n in model.graph.node) else \
        "fp32 embeddings"
    return (f"{len(nodes)} MatMulNBits, {attrs.get('bits')} bits, block {attrs.get('block_size')}, accuracy level "
            f"{attrs.get('accuracy_level', 0)}; {embed}; GroupQueryAttention")


def eager_target(prepared: Prepared, hf_dir: Path, gate: Gate) -> Target:
    """Eager transformers: the reference itself."""
    ours, spec = library_versions(), prepared.model.spec
    eager = Target("eager", f"PyTorch {ours['torch']}, transformers {ours['transformers']}", "eager",
                   how=f"transformers generate on the fp32 folder saved from {spec.source}, attention "
                       f"{spec.attn_implementation or 'default'}", path=str(hf_dir))
    eager.parity = {"reference": True, "metrics": {"perplexity": {"artifact": reference_perplexity(gate.cases),
                                                                   "increase": 0.0}}}
    return eager


def genai_targets(precisions: tuple[str, ...], hf_dir: Path, work: Path, source: str, gate: Gate,
                  timeout: float) -> list[Target]:
    """onnxruntime-genai's builds, each judged here through the right-padding adapter."""
    targets = []
    for precision in precisions:
        target = genai_peer(hf_dir, work / precision, precision, source, timeout)
        target.group = f"onnxruntime-genai {genai_version()}"
        targets.append(target)
        if target.error is None:
            target.stats["weights"] = onnx_weights(Path(target.path or ""))
            log.info("gate: %s (its steps, padding moved to the right)", target.name)
            run = onnx_function(Path(target.path or "") / "model.onnx", "cpu", gate.threads)
            judge_steps(target, right_padded(run, gate.layout), gate)
    return targets


def intel_targets(prepared: Prepared, hf_dir: Path, work: Path, gate: Gate, timeout: float
                  ) -> tuple[list[Target], dict[str, str]]:
    """optimum-intel's exports, built and run in .venv-intel and judged here: (targets, their versions)."""
    log.info("optimum-intel: build and gate in %s", INTEL_PYTHON.parent.parent)
    handle = prepared.model
    found, report = intel_peers(hf_dir, work, gate.cases, handle.source_key, handle.tokenizer.pad_token_id,
                                gate.new_tokens, gate.threads, timeout)
    theirs = report.get("versions", {})
    prompts = [c.name for c in gate.cases if c.kind is CaseKind.GENERATE]
    texts = [c.name for c in gate.cases if c.kind is CaseKind.PERPLEXITY]
    compute = report.get("cpu_inference_precision", "?")
    for target in found:
        target.group = f"OpenVINO {theirs.get('openvino', '?')}, optimum-intel {theirs.get('optimum-intel', '?')}"
        target.how += f"; computes in OpenVINO's CPU default precision here ({compute})"
        outputs = report.get("peers", {}).get(target.name, {}).get("outputs")
        if target.error is None and outputs:
            judge(target, *load_outputs(Path(outputs), prompts, texts), gate)
    return found, theirs


def project_target(prepared: Prepared, gate: Gate) -> Target | None:
    """The recipe's shipped artifact, judged here through the project's runner (None when none shipped)."""
    shipped = shipped_target(prepared.out_dir)
    if shipped is None:
        return None
    log.info("gate: %s", shipped.name)
    fmt = Format(shipped.stats["format"])
    runtime = {Format.ONNX: "onnxruntime", Format.OPENVINO: "openvino"}.get(fmt, "torch")
    shipped.group, shipped.shipped = f"this project ({runtime} {library_versions()[runtime]})", True
    artifact = Artifact(step_folder=shipped.name, format=fmt, key=shipped.name, path=Path(shipped.path or ""))
    judge_steps(shipped, Runner(prepared.model, prepared.recipe.device, threads=gate.threads).open(artifact), gate)
    return shipped


def build_targets(prepared: Prepared, args: argparse.Namespace, work: Path, cases: list[Case], timeout: float
                  ) -> tuple[list[Target], Path, dict[str, Any]]:
    """Every target, built and judged: (targets, the fp32 folder, versions of the peers' environments)."""
    recipe, handle = prepared.recipe, prepared.model
    gate = Gate(cases, cache_layout(handle.hf_config), recipe.verify.generation.new_tokens,
                {p: recipe.verify.tolerance_for("peer", p, "logits") for p in PRESETS}, recipe.bench.threads)
    hf_dir = hf_folder(handle, work / "hf")
    targets = [eager_target(prepared, hf_dir, gate)]
    versions: dict[str, Any] = {}
    if "genai" not in args.skip:
        targets += genai_targets(args.genai_precisions, hf_dir, work / "genai", handle.source_key, gate, timeout)
        versions["genai_versions"] = {"onnxruntime-genai": genai_version(),
                                      "onnxruntime": library_versions()["onnxruntime"]}
    if "intel" not in args.skip:
        found, versions["intel_versions"] = intel_targets(prepared, hf_dir, work / "intel", gate, timeout)
        targets += found
    shipped = None if "project" in args.skip else project_target(prepared, gate)
    return [*targets, *([shipped] if shipped else [])], hf_dir, versions


def reference_perplexity(cases: list[Case]) -> float | None:
    """Eager's perplexity on the held-out windows."""
    windows = [c.outputs for c in cases if c.kind is CaseKind.PERPLEXITY]
    return perplexity(windows)[0] if windows else None
