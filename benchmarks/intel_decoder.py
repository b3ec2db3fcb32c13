"""Build optimum-intel's decoder peers and run them on the reference's prompts and windows.

Run by the optimum-intel environment's python (``.venv-intel``: optimum-intel pins transformers
below 5.6), never imported by the main one:

    .venv-intel/bin/python benchmarks/intel_decoder.py OUTDIR HF_DIR --inputs CASES.npz --pad-id N

Builds ``OVModelForCausalLM.from_pretrained(HF_DIR, export=True)`` with optimum-intel's default 4-bit
weight compression, with 8-bit weights (``load_in_8bit``) and with fp32 weights; a default that fails
is recorded with its reason, and where it fails for a group size the model's shapes do not divide,
built again with ``group_size_fallback="adjust"``, as optimum-intel's own presets do for such models.
Each built model then generates greedily on every prompt case (``generate``, the eager reference's
settings) and scores every window case (its logits, a fresh state per call) with this project's
functions, with OpenVINO's defaults otherwise. Writes ``OUTDIR/intel_decoder.json`` and
``outputs.npz`` beside each model; a model already built is reused, and a peer that failed to build
is not tried again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing is fetched
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: pipeline, benchmarks

from benchmarks.decoder_arrays import GENERATE, PERPLEXITY, load_inputs, save_outputs  # noqa: E402
from benchmarks.peer_script import reason, record_step, versions  # noqa: E402

log = logging.getLogger("peer_script")
VERSIONED = ("optimum-intel", "optimum", "transformers", "torch", "openvino", "nncf", "numpy")
XML = "openvino_model.xml"
INT4_DEFAULT: dict[str, Any] = {"bits": 4}  # optimum-intel maps exactly this to its default 4-bit config
ADJUST = {"group_size_fallback": "adjust"}


def export(hf_dir: Path, out: Path, **options: Any) -> Path:
    """OVModelForCausalLM exported from the folder with ``options``, saved as optimum-intel saves it."""
    from optimum.intel import OVModelForCausalLM

    if (out / XML).is_file():
        return out / XML
    model = OVModelForCausalLM.from_pretrained(str(hf_dir), export=True, compile=False, **options)
    partial = out.with_name(f"{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    partial.rename(out)
    return out / XML


def build_all(out: Path, hf_dir: Path, report: dict[str, Any], failed_before: dict[str, str]) -> None:
    """Every peer: default int4 (then with the group-size fallback if that is why it fails), int8 weights,
    fp32 weights; a peer that failed before from the same folder is not tried again."""
    def step(name: str, make: Callable[[], Path], precision: str, how: str) -> None:
        if name in failed_before:
            report["failed"][name] = failed_before[name]
        else:
            record_step(name, make, precision, how, report, kind="openvino")

    step("optimum-intel-int4", lambda: export(hf_dir, out / "int4", quantization_config=INT4_DEFAULT), "int4",
         "OVModelForCausalLM export, quantization_config={'bits': 4}: optimum-intel's default 4-bit weights "
         "(asymmetric, group 128, ratio 1.0)")
    if "group size" in report["failed"].get("optimum-intel-int4", "").lower():
        step("optimum-intel-int4-adjust",
             lambda: export(hf_dir, out / "int4-adjust", quantization_config={**INT4_DEFAULT, **ADJUST}), "int4",
             "the default 4-bit config with group_size_fallback='adjust' (the largest group that divides each "
             "weight; int8 where none of 32 or more does)")
    step("optimum-intel-int8", lambda: export(hf_dir, out / "int8", load_in_8bit=True), "int8",
         "OVModelForCausalLM export, load_in_8bit=True: 8-bit weights (asymmetric, per channel)")
    step("optimum-intel-fp32", lambda: export(hf_dir, out / "fp32", load_in_8bit=False), "fp32",
         "OVModelForCausalLM export, load_in_8bit=False: fp32 weights (the runtime's control)")


def cpu_precision() -> str:
    """The precision OpenVINO's CPU plugin computes in by default on this machine (bf16 where the CPU has it)."""
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def run_cases(xml: Path, cases: list[tuple[str, str, dict[str, Any]]], new_tokens: int, pad_id: int,
              threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokens per prompt case, outputs per window case) of one built model."""
    import numpy as np
    import torch
    from optimum.intel import OVModelForCausalLM

    from pipeline.verify.greedy import eager_generate
    from pipeline.verify.perplexity import window_outputs

    model = OVModelForCausalLM.from_pretrained(str(xml.parent), ov_config={"INFERENCE_NUM_THREADS": str(threads)})

    def logits(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():  # no past_key_values: optimum-intel starts from a fresh state
            out = model(input_ids=torch.from_numpy(inputs["input_ids"]),
                        attention_mask=torch.from_numpy(inputs["attention_mask"]))
        return {"logits": out.logits.float().numpy()}

    tokens = {name: eager_generate(model, inputs, new_tokens, pad_id)["tokens"]
              for name, kind, inputs in cases if kind == GENERATE}
    windows = {name: window_outputs(logits, inputs) for name, kind, inputs in cases if kind == PERPLEXITY}
    return tokens, windows


def main(argv: list[str]) -> int:
    """Build the peers, run each on the cases, write OUTDIR/intel_decoder.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("hf_dir", type=Path)
    parser.add_argument("--inputs", type=Path, required=True, help="the prompt and window cases (.npz)")
    parser.add_argument("--pad-id", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"peers": {}, "failed": {}, "versions": versions(VERSIONED), "model_dir": str(args.hf_dir),
                              "cpu_inference_precision": cpu_precision()}
    previous = out / "intel_decoder.json"
    failed_before = json.loads(previous.read_text(encoding="utf-8")).get("failed", {}) if previous.is_file() else {}
    build_all(out, args.hf_dir, report, failed_before)
    cases = load_inputs(args.inputs)
    for name, peer in report["peers"].items():
        try:
            tokens, windows = run_cases(Path(peer["path"]), cases, args.new_tokens, args.pad_id, args.threads)
        except Exception as exc:  # a model that cannot generate is a result: the table shows the reason
            log.warning("%s does not run: %s", name, reason(exc))
            peer["error"] = f"does not run: {reason(exc)}"
            continue
        peer["outputs"] = str(Path(peer["path"]).parent / "outputs.npz")
        save_outputs(Path(peer["outputs"]), tokens, windows)
    (out / "intel_decoder.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
