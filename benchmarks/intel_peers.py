"""Build the optimum-intel peers of a model: its OpenVINO export, and its NNCF int8 (OVQuantizer).

Run by the optimum-intel environment's python (``.venv-intel``: optimum-intel pins transformers
below 5.6), never imported by the main one:

    .venv-intel/bin/python benchmarks/intel_peers.py OUTDIR MODEL_DIR --corpus FILE [--samples N]

Calibration reads the first N sentences of FILE (one per line), tokenized one by one, the same
sentences the recipe's nncf_int8 calibrates on. Writes ``OUTDIR/intel_peers.json`` in the layout of
benchmarks/optimum_peers.py, each peer with ``"kind": "openvino"``; a step that fails is recorded
with its reason and the rest go on.
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

VERSIONED = ("optimum-intel", "optimum", "transformers", "torch", "openvino", "nncf", "numpy")
XML = "openvino_model.xml"


def export(model_dir: Path, out: Path) -> Path:
    """OVModelForFeatureExtraction.from_pretrained(export=True), saved as optimum-intel saves it."""
    from optimum.intel import OVModelForFeatureExtraction

    model = OVModelForFeatureExtraction.from_pretrained(str(model_dir), export=True, compile=False)
    model.save_pretrained(str(out))
    return out / XML


def quantize(model_dir: Path, sentences: list[str], out: Path) -> Path:
    """OVQuantizer with OVQuantizationConfig's defaults (NNCF int8, activations and weights), on the sentences."""
    import nncf
    import numpy as np
    from optimum.intel import OVConfig, OVModelForFeatureExtraction, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    samples = [{k: np.asarray(v, dtype=np.int64) for k, v in tokenizer(text, return_tensors="np").items()}
               for text in sentences]
    model = OVModelForFeatureExtraction.from_pretrained(str(model_dir), export=True, compile=False)
    quantizer = OVQuantizer.from_pretrained(model)
    config = OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(samples)))
    quantizer.quantize(calibration_dataset=nncf.Dataset(samples), ov_config=config, save_directory=str(out))
    return out / XML


def build_all(out: Path, model_dir: Path, sentences: list[str]) -> dict[str, Any]:
    """Every optimum-intel peer."""
    report: dict[str, Any] = {"peers": {}, "failed": {}, "versions": versions(VERSIONED), "model_dir": str(model_dir)}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    record_step("optimum-intel-export", lambda: export(model_dir, out / "fp32"), "fp32",
                "OVModelForFeatureExtraction.from_pretrained(export=True)", report, kind="openvino")
    record_step("optimum-intel-int8", lambda: quantize(model_dir, sentences, out / "int8"), "int8",
                f"OVQuantizer, OVQuantizationConfig() defaults, {len(sentences)} calibration sentences", report,
                kind="openvino")
    return report


def main(argv: list[str]) -> int:
    """Parse arguments, build every peer, write OUTDIR/intel_peers.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="sentence file, one per line")
    parser.add_argument("--samples", type=int, default=64, help="calibration sentences")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("peer_script").setLevel(logging.INFO)
    lines = [line.strip() for line in args.corpus.read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line][:args.samples]
    report = build_all(args.outdir.resolve(), args.model_dir, sentences)
    (args.outdir / "intel_peers.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
