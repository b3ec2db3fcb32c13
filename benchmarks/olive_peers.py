"""Build the Olive peers of a model: Olive's ONNX conversion and transformer optimization (fp32), and the
same flow with its dynamic int8 quantization, each one Olive workflow run on the CPU.

Run by the Olive environment's python (``.venv-olive``, kept apart so that Olive's dependencies never
change the main environment), never imported by the main one:

    .venv-olive/bin/python benchmarks/olive_peers.py OUTDIR MODEL_DIR [--task TASK] [--model-type bert]

Writes ``OUTDIR/olive_peers.json`` in the layout of benchmarks/optimum_peers.py; a workflow that fails
is recorded with its reason and the other goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from peer_script import record_step, versions  # beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing is fetched
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VERSIONED = ("olive-ai", "transformers", "torch", "onnx", "onnxruntime", "onnxscript", "numpy")
OPSET = 17


def workflow(model_dir: Path, task: str, model_type: str, quantize: bool, out: Path) -> dict[str, Any]:
    """An Olive workflow config: HfModel -> OnnxConversion -> OrtTransformersOptimization [-> dynamic int8];
    Olive's cache goes inside ``out``, so nothing is left in the working directory."""
    passes: dict[str, Any] = {
        "conversion": {"type": "OnnxConversion", "target_opset": OPSET},
        "transformers_optimization": {"type": "OrtTransformersOptimization", "model_type": model_type},
    }
    if quantize:
        passes["quantization"] = {"type": "OnnxDynamicQuantization"}
    cpu = {"type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}
    return {"input_model": {"type": "HfModel", "model_path": str(model_dir), "task": task},
            "systems": {"local_system": cpu}, "host": "local_system", "target": "local_system",
            "passes": passes, "evaluate_input_model": False, "log_severity_level": 3, "output_dir": str(out),
            "cache_dir": str(out / ".olive-cache")}


def run_workflow(config: dict[str, Any], out: Path) -> Path:
    """Run Olive; the ONNX file it wrote (its output folder holds exactly one)."""
    from olive.workflows import run

    run(config)
    found = sorted(path for path in out.rglob("*.onnx") if ".olive-cache" not in path.parts)
    if len(found) != 1:
        raise FileNotFoundError(f"Olive wrote {len(found)} ONNX files under {out}, expected one")
    return found[0]


def build_all(out: Path, model_dir: Path, task: str, model_type: str) -> dict[str, Any]:
    """Both Olive peers."""
    report: dict[str, Any] = {"peers": {}, "failed": {}, "versions": versions(VERSIONED), "model_dir": str(model_dir)}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, quantize in (("olive-optimized", False), ("olive-int8", True)):
        folder = out / name
        how = (f"Olive workflow: OnnxConversion(opset {OPSET}), OrtTransformersOptimization(model_type="
               f"{model_type!r})" + (", OnnxDynamicQuantization() defaults" if quantize else ""))
        config = workflow(model_dir, task, model_type, quantize, folder)
        record_step(name, lambda config=config, folder=folder: run_workflow(config, folder),
                    "int8" if quantize else "fp32", how, report)
    return report


def main(argv: list[str]) -> int:
    """Parse arguments, build every peer, write OUTDIR/olive_peers.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--task", default="feature-extraction")
    parser.add_argument("--model-type", default="bert", help="OrtTransformersOptimization's model_type")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("peer_script").setLevel(logging.INFO)
    report = build_all(args.outdir.resolve(), args.model_dir, args.task, args.model_type)
    (args.outdir / "olive_peers.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
