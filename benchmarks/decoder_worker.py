"""One decoder target's greedy generation, timed in its own process for the interleaved rounds:

    python -m benchmarks.decoder_worker SPEC.json      (from the repository root; any environment)

It serves ``pipeline.bench.worker``'s requests through that module's own loop, with a backend whose
staged call is one whole greedy generation: a real prompt of the point's shape (corpus sentences
tokenized and joined to exactly ``seq`` tokens per row, ``pipeline.bench.generation.prompt_rows``, so no
row is padded) and ``new_tokens`` new tokens per row, never fewer (an end-of-text token does not stop
it). So a block's latencies are whole generations and a round's ratio is one of tokens/s. The spec's
``kind`` says how a target generates, as its users would run it:

- ``eager``: transformers ``generate`` on the saved fp32 folder of the recipe's model;
- ``genai``: onnxruntime-genai's ``Generator`` on a model-builder folder;
- ``openvino``: optimum-intel's ``OVModelForCausalLM.generate`` (run by ``.venv-intel``'s python);
- ``project``: this project's artifact through ``pipeline.bench.generation.generate_once``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench import worker as bench_worker
from pipeline.runtime.timing import Timer

Generate = Callable[[np.ndarray], int]  # a prompt (batch x tokens) in, new tokens per row out


class Generation:
    """A benchmark backend whose staged call is one whole greedy generation of a real prompt."""

    def __init__(self, generate: Generate, prompt: Callable[[int, int], np.ndarray], new_tokens: int) -> None:
        self.generate, self.prompt, self.new_tokens = generate, prompt, new_tokens
        self.timer = Timer()

    @staticmethod
    def sync() -> None:
        """Nothing is left queued after a generation (CPU)."""

    def stage(self, inputs: dict[str, np.ndarray]) -> Callable[[], None]:
        """One generation at the shape of ``inputs`` (their tokens are replaced by a real prompt)."""
        prompt = self.prompt(*inputs["input_ids"].shape)

        def call() -> None:
            made = self.generate(prompt)
            if made != self.new_tokens:
                raise RuntimeError(f"generated {made} tokens per row, not {self.new_tokens}")
        return call


def hf_generate(model: Any, pad_id: int, new_tokens: int) -> Generate:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens (transformers or optimum-intel)."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad_id)

    def generate(prompt: np.ndarray) -> int:
        ids = torch.from_numpy(prompt)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return int(out.shape[1] - ids.shape[1])
    return generate


def genai_generate(folder: str, threads: int, new_tokens: int) -> Generate:
    """onnxruntime-genai's Generator, greedy, exactly ``new_tokens`` tokens, ``threads`` intra-op threads."""
    import json

    import onnxruntime_genai as og

    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                           "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    def generate(prompt: np.ndarray) -> int:
        batch, length = prompt.shape
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=length + new_tokens, min_length=length + new_tokens, do_sample=False,
                                  batch_size=batch)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt.astype(np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        return len(generator.get_sequence(0)) - length
    return generate


def project_generate(spec: dict[str, Any]) -> Generate:
    """This project's artifact through its own generation loop (the recipe benchmark's)."""
    from pipeline.bench.generation import generate_once
    from pipeline.core.artifact import Format
    from pipeline.model.cache import CacheLayout
    from pipeline.runtime.backends import file_backend

    layout = CacheLayout(**spec["cache"])
    inputs, outputs = ["input_ids", "attention_mask", *layout.past_names], ["logits", *layout.present_names]
    backend = file_backend(Format(spec["format"]), Path(spec["path"]), (inputs, outputs), spec["device"],
                           spec["threads"])
    return lambda prompt: len(generate_once(backend.host_outputs, outputs, prompt, layout, spec["new_tokens"]))


def open_generation(spec: Any) -> Generation:
    """The target of the spec, loaded, with its prompts."""
    from transformers import AutoTokenizer

    from pipeline.bench.generation import prompt_rows
    from pipeline.model.cache import prepare_tokenizer
    from pipeline.model.inputs import load_sentences

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(spec["tokenizer_dir"], local_files_only=True))
    sentences = load_sentences(Path(spec["corpus"]))
    kind, new_tokens, pad_id = spec["kind"], spec["new_tokens"], tokenizer.pad_token_id
    if kind == "eager":
        import torch
        from transformers import AutoModelForCausalLM

        extra = {"attn_implementation": spec["attn"]} if spec.get("attn") else {}
        model = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.float32, **extra).eval()
        generate = hf_generate(model, pad_id, new_tokens)
    elif kind == "openvino":
        from optimum.intel import OVModelForCausalLM

        threads = {"INFERENCE_NUM_THREADS": str(spec["threads"])}
        model = OVModelForCausalLM.from_pretrained(spec["path"], ov_config=threads)
        generate = hf_generate(model, pad_id, new_tokens)
    elif kind == "genai":
        generate = genai_generate(spec["path"], spec["threads"], new_tokens)
    elif kind == "project":
        generate = project_generate(spec)
    else:
        raise ValueError(f"unknown decoder target kind {kind!r}")
    return Generation(generate, lambda batch, length: prompt_rows(tokenizer, sentences, batch, length), new_tokens)


if __name__ == "__main__":
    sys.exit(bench_worker.main(sys.argv[1:], open_generation))
