"""Build the peer models: Optimum's, optimum-intel's and Olive's (each in its own environment, through a
subprocess), onnxruntime's own optimizer and dynamic quantizer with their defaults (on the recipe's
plain export), and NNCF's int8 with its defaults (on the recipe's OpenVINO IR)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peer_table import Target

log = logging.getLogger("benchmarks.peers")
ROOT = Path(__file__).resolve().parents[1]
OPTIMUM_PYTHON = ROOT / ".venv-optimum" / "bin" / "python"
OPTIMUM_SCRIPT = Path(__file__).with_name("optimum_peers.py")
INTEL_PYTHON = ROOT / ".venv-intel" / "bin" / "python"
INTEL_SCRIPT = Path(__file__).with_name("intel_peers.py")
OLIVE_PYTHON = ROOT / ".venv-olive" / "bin" / "python"
OLIVE_SCRIPT = Path(__file__).with_name("olive_peers.py")
NOTABLE_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
               "SkipSimplifiedLayerNormalization", "LayerNormalization", "BiasGelu", "FastGelu", "Gelu",
               "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QLinearMatMul", "QAttention",
               "MatMulIntegerToFloat", "QuantizeLinear", "DequantizeLinear")


def reason(exc: BaseException) -> str:
    """'Type: first line of the message' (one line for the table)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def onnx_stats(path: Path) -> dict[str, Any]:
    """Size on disk, node count, and counts of fused and quantized operators of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = Counter(node.op_type for node in model.graph.node)
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))
    return {"bytes": size, "nodes": len(model.graph.node), "ops": {op: counts[op] for op in NOTABLE_OPS if counts[op]}}


def optimum_source(handle: Any) -> tuple[Path | None, str | None]:
    """The model folder Optimum should export, or why it cannot (it needs the same weights in a folder)."""
    kind, where = handle.location
    if handle.spec.weights == "random":
        return None, "the recipe uses random weights; Optimum would export different (pretrained) ones"
    if kind not in ("packaged", "folder"):
        return None, f"Optimum needs a local model folder; this recipe's source is a {kind}"
    return Path(where), None


def optimum_peers(out: Path, model_dir: Path, task: str, isa: str, timeout: float,
                  python: Path = OPTIMUM_PYTHON) -> tuple[list[Target], dict[str, str], str]:
    """Optimum's peers built by benchmarks/optimum_peers.py in .venv-optimum: (targets, versions, isa used).

    A missing environment or a failed script gives one failed target saying why.
    """
    command = [str(OPTIMUM_SCRIPT), str(out), str(model_dir), "--task", task, "--isa", isa]
    targets, report = env_peers(EnvPeers("Optimum", "optimum", python, "optimum-env", "optimum_peers.json"),
                                command, out, timeout)
    return targets, report.get("versions", {}), report.get("isa", isa)


def intel_peers(out: Path, model_dir: Path, corpus: Path, samples: int, timeout: float,
                python: Path = INTEL_PYTHON) -> tuple[list[Target], dict[str, str]]:
    """optimum-intel's peers built by benchmarks/intel_peers.py in .venv-intel: (targets, versions)."""
    command = [str(INTEL_SCRIPT), str(out), str(model_dir), "--corpus", str(corpus), "--samples", str(samples)]
    targets, report = env_peers(EnvPeers("optimum-intel", "optimum-intel", python, "intel-env", "intel_peers.json"),
                                command, out, timeout)
    return targets, report.get("versions", {})


def olive_peers(out: Path, model_dir: Path, task: str, timeout: float,
                python: Path = OLIVE_PYTHON) -> tuple[list[Target], dict[str, str]]:
    """Olive's peers built by benchmarks/olive_peers.py in .venv-olive: (targets, versions)."""
    command = [str(OLIVE_SCRIPT), str(out), str(model_dir), "--task", task]
    targets, report = env_peers(EnvPeers("Olive", "olive", python, "olive-env", "olive_peers.json"),
                                command, out, timeout)
    return targets, report.get("versions", {})


@dataclass(frozen=True)
class EnvPeers:
    """A peers script that runs in its own environment: its group, the name of its failure row, its
    python, the make target that builds that environment, and the report it writes."""

    group: str
    name: str
    python: Path
    make_target: str
    report: str


def env_peers(env: EnvPeers, command: list[str], out: Path, timeout: float) -> tuple[list[Target], dict[str, Any]]:
    """Run a peers script with its environment's python, offline; (its targets, its report).

    A missing environment or a failed script gives one failed target saying why.
    """
    failed = Target(env.name, env.group, "onnx")
    if not env.python.exists():
        failed.error = f"no environment at {env.python} (build it with `make {env.make_target}`)"
        return [failed], {}
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1", TOKENIZERS_PARALLELISM="false")
    script = Path(command[0]).name
    try:
        proc = subprocess.run([str(env.python), *command], capture_output=True, text=True, timeout=timeout,
                              env=environ, cwd=ROOT)
    except subprocess.TimeoutExpired:
        failed.error = f"benchmarks/{script} timed out after {timeout:.0f} s"
        return [failed], {}
    report_path = out / env.report
    if proc.returncode != 0 or not report_path.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        failed.error = f"benchmarks/{script}: {lines[-1] if lines else f'exit {proc.returncode}'}"
        return [failed], {}
    report = json.loads(report_path.read_text(encoding="utf-8"))
    targets = [Target(name, env.group, p.get("kind", "onnx"), precision=p["precision"], how=p["how"], path=p["path"],
                      stats={"seconds": p["seconds"]}) for name, p in report["peers"].items()]
    targets += [Target(name, env.group, "onnx", precision="int8" if "int8" in name else "fp32", error=why)
                for name, why in report["failed"].items()]
    return targets, report


def ort_optimized(plain: Path, out: Path) -> Target:
    """onnxruntime.transformers.optimizer.optimize_model with its defaults (model_type bert, heads and size 0)."""
    target = Target("ort-optimize_model", "onnxruntime", "onnx",
                    how="onnxruntime.transformers.optimizer.optimize_model(model_type='bert') with its defaults, "
                        "on the plain export")
    start = time.perf_counter()
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        out.mkdir(parents=True, exist_ok=True)
        model = optimize_model(str(plain), model_type="bert")
        model.save_model_to_file(str(out / "model.onnx"))
    except Exception as exc:  # a failure is a result: the table shows the reason
        target.error = reason(exc)
        return target
    target.path, target.stats["seconds"] = str(out / "model.onnx"), time.perf_counter() - start
    return target


def ort_quantized(plain: Path, out: Path) -> Target:
    """onnxruntime.quantization.quantize_dynamic with its defaults on the plain export."""
    target = Target("ort-quantize_dynamic", "onnxruntime", "onnx", precision="int8",
                    how="onnxruntime.quantization.quantize_dynamic with its defaults, on the plain export")
    start = time.perf_counter()
    try:
        from onnxruntime.quantization import quantize_dynamic

        out.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(plain), str(out / "model.onnx"))
    except Exception as exc:  # a failure is a result: the table shows the reason
        target.error = reason(exc)
        return target
    target.path, target.stats["seconds"] = str(out / "model.onnx"), time.perf_counter() - start
    return target


def nncf_quantized(ir: Path, out: Path, samples: list[dict[str, Any]]) -> Target:
    """nncf.quantize with its transformer preset and defaults (SmoothQuant 0.95) on the fp32 IR, calibrated
    on the same sentences as the recipe's nncf_int8: what a user of NNCF's documented flow gets."""
    target = Target("nncf-quantize", "NNCF", "openvino", precision="int8",
                    how=f"nncf.quantize(model_type=TRANSFORMER) with its defaults, {len(samples)} calibration "
                        "sentences, on the recipe's OpenVINO IR")
    start = time.perf_counter()
    try:
        import contextlib
        import io

        import nncf
        import openvino as ov

        from passes.precision.nncf_int8 import decline_telemetry

        nncf.set_log_level(logging.ERROR)
        decline_telemetry()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = nncf.quantize(ov.Core().read_model(str(ir)), nncf.Dataset(samples),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
        out.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    except Exception as exc:  # a failure is a result: the table shows the reason
        target.error = reason(exc)
        return target
    target.path, target.stats["seconds"] = str(out / "model.xml"), time.perf_counter() - start
    target.stats["bytes"] = sum(f.stat().st_size for f in out.iterdir())
    return target


def add_stats(targets: list[Target]) -> None:
    """Size, nodes and fused operators of every ONNX target that has a file."""
    for t in targets:
        if t.kind == "onnx" and t.path and not t.error:
            try:
                t.stats.update(onnx_stats(Path(t.path)))
            except Exception as exc:  # unreadable file: its parity run will say more
                log.warning("%s: cannot read %s: %s", t.name, t.path, reason(exc))
