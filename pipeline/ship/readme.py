"""README.md inside a bundle: what it is, what it needs to run, and how to load it, written from the same
facts as manifest.json (its ``requires``, ``sentence`` and ``generation`` entries), so the two cannot disagree."""

from __future__ import annotations

from typing import Any

OPTIMUM_CLASSES = {"feature-extraction": "FeatureExtraction", "text-classification": "SequenceClassification"}
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_SENTENCE_TRANSFORMERS = "3.2"  # the first release with the onnx and openvino backends


def bundle_readme(info: dict[str, Any]) -> str:
    """The text of README.md for a bundle whose manifest (without its files table) is ``info``."""
    requires = info["requires"]
    lines = [f"# {info['recipe']}: {info['name']} ({info['format']}, {info['precision']})", "",
             f"Shipped by model-pipeline from step `{info['step']}`. `manifest.json` holds the sha256 of every "
             "file, the lineage from the source model, the parity verdict against eager PyTorch and the "
             "benchmark; `python -m pipeline ship --check <this folder>` verifies that nothing was changed, "
             "removed or added."]
    if info.get("random_weights"):
        lines += ["", "**Random weights**: this bundle was built from seeded random weights, not trained ones."]
    if info.get("gguf_weights"):
        lines += ["", f"**Weights from a GGUF file**: the source model's weights were stored as "
                      f"{info['gguf_weights']} in a GGUF file and dequantized to fp32 by transformers. The parity "
                      f"gate compared this bundle with that dequantized model, so it carries the error of "
                      f"{info['gguf_weights']} on top of its own."]
    lines += ["", "## What it needs", "", *requirement_lines(info), "", "## How to load it", ""]
    lines += loading_sections(info)
    if info.get("triton"):
        lines += ["### Triton Inference Server", "",
                  f"`{info['triton']['path']}/` is a model repository entry (`config.pbtxt` and version `1/`, a "
                  f"second copy of `{info['model_file']}`): serve it with "
                  f"`tritonserver --model-repository <this folder>/{info['triton']['path'].rsplit('/', 1)[0]}`.",
                  ""]
    if requires["runtime"] == "onnxruntime" and requires.get("onnxruntime_only"):
        lines += ["OpenVINO's ONNX reader and other ONNX runtimes cannot run this graph: it holds onnxruntime "
                  "contrib operators (see above).", ""]
    return "\n".join(lines).rstrip() + "\n"


def requirement_lines(info: dict[str, Any]) -> list[str]:
    """The bullet list of what the bundle needs."""
    requires = info["requires"]
    runtime = requires["runtime"]
    verified = requires.get("verified_with")
    lines = [f"- `{runtime}` >= {requires.get('min_version')} (verified with {verified})"]
    if runtime == "onnxruntime":
        lines.append(f"- execution provider `{requires.get('execution_provider')}`; ONNX opset "
                     f"{requires.get('onnx_opset')}, IR version {requires.get('onnx_ir_version')}")
        if requires.get("contrib_ops"):
            lines.append(f"- onnxruntime contrib operators (domain `com.microsoft`): "
                         f"{', '.join(requires['contrib_ops'])}. They are versioned with onnxruntime, so this graph "
                         f"runs on onnxruntime only, from the version that verified it")
        if requires.get("custom_ops"):
            lines.append(f"- operators outside ONNX and onnxruntime: {', '.join(requires['custom_ops'])}")
    elif runtime == "openvino":
        lines.append(f"- device `{requires.get('device')}`, IR version {requires.get('ir_version')}, compiled with "
                     f"the options it was verified with (`{info['openvino_config_file']}`, also manifest.json's "
                     f"`openvino_config`): {_options(requires.get('compile_config') or {})}. Without them the "
                     f"CPU plugin may run another precision (bf16 where the CPU has it)")
    else:
        lines.append(f"- device `{requires.get('device')}`")
    lines.append(io_line(info))
    loader = requires.get("generation")
    if loader:
        lines.append(f"- for `generate`: `{loader['package']}` >= {loader['min_version']} (its "
                     f"`{loader['class']}`), which brings the transformers release it supports")
    sentence = info.get("sentence")
    if sentence:
        norm = ", then L2-normalised" if sentence["normalize"] else ""
        lines.append(f"- sentence embedding: {sentence['pooling']} pooling of `last_hidden_state` over the attention "
                     f"mask{norm}; inputs truncated at {sentence['max_seq_length']} tokens (the tokenizer's "
                     f"`model_max_length`, sentence-transformers' `max_seq_length`)")
    return lines


def io_line(info: dict[str, Any]) -> str:
    """The inputs and outputs; a decoder's cache as one pattern rather than a name per layer."""
    cache = (info.get("generation") or {}).get("cache")
    if cache:
        return (f"- inputs `input_ids`, `attention_mask` and the cache, `past_key_values.<i>.key` / `.value` for i in "
                f"0..{cache['layers'] - 1} (batch x {cache['kv_heads']} x past length x {cache['head_dim']}, float32); "
                f"outputs `logits` and the grown cache, `present.<i>.key` / `.value`")
    return (f"- inputs {', '.join(f'`{name}`' for name in info['inputs'])}; outputs "
            f"{', '.join(f'`{name}`' for name in info['outputs'])}")


def _options(config: dict[str, Any]) -> str:
    return ", ".join(f"`{key}={value}`" for key, value in sorted(config.items())) or "none"


def loading_sections(info: dict[str, Any]) -> list[str]:
    """A section per way the bundle loads, each with a short snippet."""
    fmt, task, model_file = info["format"], info["task"], info["model_file"]
    sentence = info.get("sentence") or {}
    backend = sentence.get("sentence_transformers_backend")
    sections: list[str] = []
    if backend:
        kwargs = ', model_kwargs={"ov_config": f"{bundle}/' + info["openvino_config_file"] + '"}' \
            if backend == "openvino" else ""
        extra = "optimum-onnx[onnxruntime]" if backend == "onnx" else "optimum-intel[openvino]"
        sections += ["### sentence-transformers", "",
                     f"sentence-transformers >= {MIN_SENTENCE_TRANSFORMERS} with `{extra}`; it reads modules.json, "
                     f"the pooling folder and sentence_bert_config.json here and gives the source model's "
                     f"embeddings:", "", "```python", "from sentence_transformers import SentenceTransformer", "",
                     'bundle = "path/to/this/folder"',
                     f'model = SentenceTransformer(bundle, backend="{backend}"{kwargs})',
                     'embeddings = model.encode(["A sentence to embed."])', "```", ""]
    sections += generation_sections(info)
    if fmt == "onnx" and info.get("generation"):
        sections += decoder_onnx_section(info)
    elif fmt == "onnx":
        text = [name for name in info["inputs"] if name in TEXT_INPUTS]
        names = "[" + ", ".join(f'"{name}"' for name in text) + "]"
        sections += ["### onnxruntime", "", "```python", "import onnxruntime as ort",
                     "from transformers import AutoTokenizer", "", 'bundle = "path/to/this/folder"',
                     "tokenizer = AutoTokenizer.from_pretrained(bundle)",
                     f'session = ort.InferenceSession(f"{{bundle}}/{model_file}", '
                     f'providers=["{info["requires"].get("execution_provider")}"])',
                     'feed = tokenizer(["A sentence."], padding=True, truncation=True, return_tensors="np")',
                     f"outputs = session.run(None, {{name: feed[name] for name in {names}}})", "```", ""]
        if task in OPTIMUM_CLASSES:
            cls = f"ORTModelFor{OPTIMUM_CLASSES[task]}"
            sections += ["### Optimum", "", f"`optimum-onnx[onnxruntime]` finds `{model_file}` at the root:", "",
                         "```python", f"from optimum.onnxruntime import {cls}", "",
                         f'model = {cls}.from_pretrained("path/to/this/folder")', "```", ""]
    elif fmt == "openvino":
        sections += ["### OpenVINO", "", "```python", "import json", "import openvino as ov", "",
                     'bundle = "path/to/this/folder"',
                     f'config = json.load(open(f"{{bundle}}/{info["openvino_config_file"]}"))',
                     "core = ov.Core()",
                     f'compiled = core.compile_model(core.read_model(f"{{bundle}}/{model_file}"), '
                     f'"{info["requires"].get("device")}", config)', "```", ""]
        if task in OPTIMUM_CLASSES:
            cls = f"OVModelFor{OPTIMUM_CLASSES[task]}"
            sections += ["### optimum-intel", "", "```python", "import json",
                         f"from optimum.intel import {cls}", "", 'bundle = "path/to/this/folder"',
                         f'config = json.load(open(f"{{bundle}}/{info["openvino_config_file"]}"))',
                         f"model = {cls}.from_pretrained(bundle, ov_config=config)", "```", ""]
    elif fmt == "torchscript":
        sections += ["### torch", "", "```python", "import torch", "",
                     f'module = torch.jit.load("path/to/this/folder/{model_file}")',
                     "outputs = module(" + ", ".join(info["inputs"]) + ")  # int64 tensors, in this order", "```", ""]
    elif fmt == "torch_export":
        sections += ["### torch", "", "```python", "import torch", "",
                     f'module = torch.export.load("path/to/this/folder/{model_file}").module()',
                     "outputs = module(" + ", ".join(info["inputs"]) + ")  # int64 tensors, in this order", "```", ""]
    return sections


def generation_sections(info: dict[str, Any]) -> list[str]:
    """A decoder's bundle in Optimum's (ONNX) or optimum-intel's (IR) class, generating greedily: the tokens its
    parity gate checked. Empty for a format neither class loads."""
    loader = (info.get("generation") or {}).get("loader")
    if not loader:
        return []
    kwargs = ", ".join(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value!r}"
                       for key, value in loader["kwargs"].items())
    openvino = info["format"] == "openvino"
    if openvino:
        kwargs += ", ov_config=config"
    note = ("the IR is stateless (its cache is an input and an output), so `stateful=False`; optimum-intel warns "
            "that the model has no state" if openvino else
            f"`{info['model_file']}` at the root is the file it looks for; it warns that a graph without a "
            f"`position_ids` input is a legacy one, and a later optimum-onnx may stop loading such graphs")
    return [f"### Generation ({loader['class']})", "",
            f"`{loader['package']}` loads the bundle as it is and generates with transformers' `generate`. The graph "
            f"has no `position_ids` input: it counts positions from the attention mask, as `generate` does with the "
            f"left padding the tokenizer here applies. {note[0].upper()}{note[1:]}.", "",
            "```python", *(["import json", ""] if openvino else []),
            f"from {loader['module']} import {loader['class']}", "from transformers import AutoTokenizer", "",
            'bundle = "path/to/this/folder"', "tokenizer = AutoTokenizer.from_pretrained(bundle)  # pads on the left",
            *([f'config = json.load(open(f"{{bundle}}/{info["openvino_config_file"]}"))'] if openvino else []),
            f"model = {loader['class']}.from_pretrained(bundle, {kwargs})",
            'prompts = tokenizer(["The capital of France is", "Once upon a time"], padding=True, return_tensors="pt")',
            "tokens = model.generate(**prompts, max_new_tokens=32, do_sample=False)  # greedy, as verified",
            'print(tokenizer.batch_decode(tokens[:, prompts["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```", ""]


def decoder_onnx_section(info: dict[str, Any]) -> list[str]:
    """One step of a decoder's graph in onnxruntime: the prompt with an empty cache."""
    cache = info["generation"]["cache"]
    shape = f"(batch, {cache['kv_heads']}, 0, {cache['head_dim']})"
    return ["### onnxruntime", "", "One call is one step: tokens, their attention mask (past and current tokens) "
            "and the cache in; logits and the grown cache out.", "", "```python", "import numpy as np",
            "import onnxruntime as ort", "from transformers import AutoTokenizer", "", 'bundle = "path/to/this/folder"',
            "tokenizer = AutoTokenizer.from_pretrained(bundle)",
            f'session = ort.InferenceSession(f"{{bundle}}/{info["model_file"]}", '
            f'providers=["{info["requires"].get("execution_provider")}"])',
            'feed = dict(tokenizer(["A prompt."], padding=True, return_tensors="np"))',
            'batch = feed["input_ids"].shape[0]',
            f"for i in range({cache['layers']}):  # the prompt's cache is empty: 0 past positions",
            '    for kind in ("key", "value"):',
            f'        feed[f"past_key_values.{{i}}.{{kind}}"] = np.zeros({shape}, dtype=np.float32)',
            "logits, *present = session.run(None, feed)  # present.<i>.key / .value, in that order: the next step's "
            "cache", "```", ""]
