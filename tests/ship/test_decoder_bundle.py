"""A decoder's bundle generates what its gate checked: Optimum's ORTModelForCausalLM (``.venv-optimum``) loads the
fp32 and the int8-weight (MatMulNBits) ONNX bundles, optimum-intel's OVModelForCausalLM (``.venv-intel``) the
OpenVINO IR bundle, each as the bundle's manifest says, and greedy ``generate`` from left-padded prompts gives
the tokens the project's own greedy decoding gives with the same artifact through its Runner.

A tiny random Llama (grouped-query attention) with the packaged MiniLM tokenizer, its weights drawn wider than
transformers' default: with the default, its tied embeddings make it repeat a prompt's last token whatever the
positions and the padding, and equal tokens would prove nothing. Both classes pin other transformers releases
than this environment's, so the loading runs in those environments and the tokens come back as JSON. (Fast: the
config.json and tokenizer_config.json both transformers releases read.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from packaging.version import Version

from pipeline.model.cache import INPUTS, cache_layout
from pipeline.model.inputs import tokenize
from pipeline.report.outcome import RunResult
from pipeline.run.optimize import run
from pipeline.run.prepare import prepare
from pipeline.runtime.runner import Runner
from pipeline.ship.bundle import build_bundle, check_bundle
from pipeline.ship.generation import finish_tokenizer, legacy_config
from pipeline.verify.greedy import greedy, visible_lengths

ROOT = Path(__file__).resolve().parents[2]
PYTHONS = {"onnx": ROOT / ".venv-optimum" / "bin" / "python", "openvino": ROOT / ".venv-intel" / "bin" / "python"}
MAKE = {"onnx": "make optimum-env", "openvino": "make intel-env"}
# bundle -> (format, the step it ships)
CASES = {"onnx": ("onnx", "onnx_export"), "onnx-int8": ("onnx", "matmul_nbits"),
         "openvino": ("openvino", "openvino_convert")}
PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived a", "Hello",
           "Every bundle says how to load it"]
NEW_TOKENS = 12
WEIGHT_STD = 0.2  # transformers' initializer_range; its default 0.02 gives one token, repeated
LAYOUT_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
MODEL_FILES = {"onnx": {"model.onnx"},
               "openvino": {"openvino_model.xml", "openvino_model.bin", "ov_compile_config.json"}}
# run in the other environment: load each bundle as its manifest.json's `generation.loader` says, generate greedily
LOADER = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
from importlib import import_module, metadata
from transformers import AutoTokenizer

def generate(bundle, prompts, new_tokens):
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    loader = manifest["generation"]["loader"]
    kwargs = dict(loader["kwargs"])
    if manifest["openvino_config_file"]:
        kwargs["ov_config"] = json.load(open(os.path.join(bundle, manifest["openvino_config_file"])))
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    model = getattr(import_module(loader["module"]), loader["class"]).from_pretrained(bundle, **kwargs)
    feed = tokenizer(prompts, padding=True, return_tensors="pt")
    out = model.generate(**feed, max_new_tokens=new_tokens, do_sample=False)
    return {"class": type(model).__name__, "inputs": sorted(feed), "input_ids": feed["input_ids"].tolist(),
            "tokens": out[:, feed["input_ids"].shape[1]:].tolist(),
            "version": metadata.version(loader["package"].split("[")[0]),
            "transformers": metadata.version("transformers")}

prompts, new_tokens = json.loads(sys.argv[1]), int(sys.argv[2])
print(json.dumps({bundle: generate(bundle, prompts, new_tokens) for bundle in sys.argv[3:]}))
"""


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_config: Path) -> RunResult:
    """onnx_export, 8-bit MatMulNBits weights and the OpenVINO IR of the export, on the tiny Llama."""
    folder = tmp_path_factory.mktemp("llama_bundle")
    config = folder / "tiny-llama-wide.json"
    config.write_text(json.dumps({**json.loads(tiny_llama_config.read_text()), "initializer_range": WEIGHT_STD}))
    recipe = folder / "tiny_llama.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(config), "tokenizer": "packaged:all-MiniLM-L6-v2",
                  "attn_implementation": "eager"},
        "task": "text-generation",
        "inputs": {"names": list(INPUTS), "outputs": ["logits"], "export_batch": 2, "export_seq": 16},
        "passes": [{"onnx_export": {"exporter": "torchscript", "opset": 17}},
                   {"matmul_nbits": {"bits": 8, "block_size": 32, "repair": False}},
                   {"openvino_convert": {"from": "onnx_export"}}],
        "verify": {"shapes": [[1, 7]], "sentence_batches": 1, "sentence_batch_size": 2, "perplexity": None,
                   "generation": {"new_tokens": 4, "prompts": 2, "batch": 2, "decode_steps": 1}},
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return run(prepare(recipe, out=folder / "out"), bench="skip")


@pytest.fixture(scope="module")
def bundles(llama_run: RunResult) -> dict[str, Path]:
    """A bundle per case, each shipping its step of the run."""
    return {case: build_bundle(dataclasses.replace(llama_run, shipped=step, out_dir=llama_run.out_dir / case))
            for case, (_, step) in CASES.items()}


def project_greedy(result: RunResult, step: str) -> tuple[np.ndarray, np.ndarray]:
    """(the left-padded prompt ids, the tokens the project's greedy decoding picks with the step's artifact)."""
    handle = result.model
    prompt = tokenize(handle.tokenizer, PROMPTS, list(INPUTS))
    fn = Runner(handle).open(result.artifacts[step])
    return prompt["input_ids"], greedy(fn, prompt, cache_layout(handle.hf_config), NEW_TOKENS)


@pytest.fixture(scope="module")
def generated(bundles: dict[str, Path]) -> dict[str, dict[str, Any] | str]:
    """What each bundle's class generated, with the versions it ran, by case; the reason when its environment is
    missing. One process per environment, for all of its bundles."""
    out: dict[str, dict[str, Any] | str] = {}
    for fmt, python in PYTHONS.items():
        cases = [case for case, (case_fmt, _) in CASES.items() if case_fmt == fmt]
        if not python.exists():
            out.update({case: f"no environment at {python} (build it with `{MAKE[fmt]}`)" for case in cases})
            continue
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(PYTHONNOUSERSITE="1")
        proc = subprocess.run([str(python), "-c", LOADER, json.dumps(PROMPTS), str(NEW_TOKENS),
                               *(str(bundles[case]) for case in cases)],
                              capture_output=True, text=True, timeout=300, env=env, cwd=python.parents[2])
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        said = json.loads(proc.stdout.strip().splitlines()[-1])
        out.update({case: said[str(bundles[case])] for case in cases})
    return out


@pytest.mark.slow
def test_the_bundles_are_laid_out_for_generation(bundles: dict[str, Path]) -> None:
    for case, bundle in bundles.items():
        fmt = CASES[case][0]
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert set(manifest["files"]) == LAYOUT_FILES | MODEL_FILES[fmt], case
        assert check_bundle(bundle) == []
        tokenizer = json.loads((bundle / "tokenizer_config.json").read_text())
        assert tokenizer["padding_side"] == "left" and tokenizer["model_input_names"] == list(INPUTS)
        assert json.loads((bundle / "config.json").read_text())["rope_theta"] == 10000.0  # transformers 4 reads it
        generation = manifest["generation"]
        assert generation["cache"] == {"layers": 2, "kv_heads": 2, "head_dim": 16}
        assert manifest["requires"]["generation"]["class"] == generation["loader"]["class"]
        assert manifest["random_weights"] and manifest["gguf_weights"] is None
        readme = (bundle / "README.md").read_text()
        assert f"{generation['loader']['class']}.from_pretrained(bundle, " in readme and "do_sample=False" in readme
    assert json.loads((bundles["onnx-int8"] / "manifest.json").read_text())["requires"]["contrib_ops"] == [
        "MatMulNBits"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_the_bundle_generates_the_tokens_the_gate_checked(case: str, llama_run: RunResult, bundles: dict[str, Path],
                                                           generated: dict[str, dict[str, Any] | str]) -> None:
    said = generated[case]
    if isinstance(said, str):
        pytest.skip(said)
    bundle = bundles[case]
    prompt_ids, expected = project_greedy(llama_run, CASES[case][1])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert said["class"] == manifest["generation"]["loader"]["class"], said
    assert Version(said["version"]) >= Version(manifest["requires"]["generation"]["min_version"]), said
    assert said["inputs"] == ["attention_mask", "input_ids"] and said["input_ids"] == prompt_ids.tolist()
    eos = json.loads((bundle / "generation_config.json").read_text())["eos_token_id"]
    shown = visible_lengths(expected, {eos})  # generate stops a row at the end-of-text token, greedy() does not
    got = np.asarray(said["tokens"])
    assert shown.min() >= 1 and got.shape[1] >= shown.max(), (said, expected)
    assert len(np.unique(expected)) > NEW_TOKENS, expected  # tokens that depend on the context
    for row, length in enumerate(shown):
        assert got[row, :length].tolist() == expected[row, :length].tolist(), (case, row, said, expected)



def test_config_json_names_the_rotary_settings_for_transformers_4_and_5() -> None:
    llama3 = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}
    data = legacy_config({"model_type": "llama", "rope_parameters": llama3, "_model_name_or_path": "from a GGUF"})
    assert data == {"model_type": "llama", "rope_parameters": llama3, "rope_theta": 500000.0,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    plain = legacy_config({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}})
    assert plain["rope_theta"] == 1e5 and "rope_scaling" not in plain


@pytest.mark.parametrize("decoder", [False, True])
def test_the_tokenizer_config_is_one_transformers_4_reads(decoder: bool, tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend",
                                                                "padding_side": "right"}))
    finish_tokenizer(tmp_path, decoder)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["padding_side"], config.get("model_input_names")) == (
        ("left", list(INPUTS)) if decoder else ("right", None))
