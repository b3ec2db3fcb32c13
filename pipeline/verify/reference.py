"""Golden inputs and eager outputs, computed from a freshly loaded model before any pass runs.

Exporting can change the eager module's state (after ``torch.onnx.export`` the same module gave
outputs 1.03 away from a fresh one), so the reference is taken first, saved as .npz with its seed,
and reused while the model, the inputs and the library versions are unchanged.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import RecipeError
from pipeline.core.limits import check_memory, text_lines
from pipeline.core.seal import read_record, write_record
from pipeline.core.store import canonical_json, sha256_file, sha256_text, write_bytes_atomic
from pipeline.core.versions import library_versions
from pipeline.model.cache import INPUTS, cache_layout
from pipeline.model.inputs import Inputs, load_sentences, random_tokens, resize_examples, sentence_batches
from pipeline.model.loading import ModelHandle
from pipeline.runtime.runner import ModelFn, Runner
from pipeline.verify.accuracy import accuracy_batches, load_labeled
from pipeline.verify.batching import batch_case_inputs, padded_length
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.embedding import embedding_cases, embedding_key
from pipeline.verify.greedy import eager_generate, prompt_batches, steps
from pipeline.verify.perplexity import DEFAULT_TEXT, text_windows, window_outputs

log = logging.getLogger(__name__)
FILE = "reference.npz"
# an embedding case's SentenceTransformer embeddings, beside its inputs/<name> and outputs/<name> arrays
EMBEDDING_ARRAY = "embedding/sentence_embedding"



def _cases_inputs(recipe: Any, handle: ModelHandle) -> dict[str, tuple[CaseKind, Inputs]]:
    verify, names = recipe.verify, recipe.inputs.names
    if handle.tokenizer is None:
        examples = handle.factory_examples
        return {f"example_b{b}": (CaseKind.FORWARD, resize_examples(examples, b))
                for b in sorted({1, 3, recipe.inputs.export_batch})}
    cases: dict[str, tuple[CaseKind, Inputs]] = {}
    if verify.sentence_batches:
        sentences = load_sentences(recipe.inputs.corpus_path)
        batches = sentence_batches(handle.tokenizer, sentences, names, verify.sentence_batch_size,
                                   verify.sentence_batches, seed=recipe.inputs.seed)
        cases.update({f"sentences_{i}": (CaseKind.FORWARD, batch) for i, batch in enumerate(batches)})
    if verify.batch_cases.sentences and handle.task != "text-generation":
        cases.update(batch_case_inputs(handle.tokenizer, load_sentences(recipe.inputs.corpus_path), names,
                                       verify.batch_cases.sentences, padded_length(recipe, handle.max_positions),
                                       recipe.inputs.seed))
    vocab = len(handle.tokenizer)
    for i, (batch, seq) in enumerate(verify.shapes):
        cases[f"random_b{batch}_s{seq}"] = (CaseKind.FORWARD,
                                            random_tokens(names, batch, seq, vocab, seed=recipe.inputs.seed + i))
    if handle.task == "text-generation":  # every forward case is a prefill: an empty cache
        layout = cache_layout(handle.hf_config)
        cases = {name: (kind, {**inputs, **layout.empty(len(inputs["input_ids"]))})
                 for name, (kind, inputs) in cases.items()}
    if verify.accuracy is not None:
        texts, _ = load_labeled(handle.base_dir / verify.accuracy.file, verify.accuracy)
        batches = accuracy_batches(handle.tokenizer, texts, names, verify.accuracy.batch)
        cases.update({f"accuracy_{i}": (CaseKind.ACCURACY, batch) for i, batch in enumerate(batches)})
    return cases


def _decoding_cases(recipe: Any, handle: ModelHandle, run: ModelFn) -> list[Case]:
    """Decode steps on eager's own cache of the first sentence batch, and eager ``generate``'s tokens
    for the corpus prompts (``generate_<i>`` cases: prompts in, tokens out)."""
    spec, layout = recipe.verify.generation, cache_layout(handle.hf_config)
    sentences = load_sentences(recipe.inputs.corpus_path)
    cases = []
    if spec.decode_steps:
        prompt = sentence_batches(handle.tokenizer, sentences, INPUTS, recipe.verify.sentence_batch_size, 1,
                                  seed=recipe.inputs.seed)[0]
        decoded = list(steps(run, prompt, layout, spec.decode_steps + 1))[1:]
        cases += [Case(f"decode_{i + 1}", inputs, outputs) for i, (inputs, outputs, _) in enumerate(decoded)]
    model = handle.load().module.model  # a fresh model: generate keeps no state, but an exporter might
    for i, prompt in enumerate(prompt_batches(handle.tokenizer, sentences[:spec.prompts], spec.batch)):
        generated = eager_generate(model, prompt, spec.new_tokens, handle.tokenizer.pad_token_id)
        cases.append(Case(f"generate_{i}", prompt, generated, CaseKind.GENERATE))
    return cases + _perplexity_cases(recipe, handle, run)


def perplexity_text(recipe: Any, base_dir: Path) -> Path | None:
    """The held-out text the perplexity is measured on (None when the recipe measures none)."""
    spec = recipe.verify.perplexity
    if spec is None or recipe.task != "text-generation":
        return None
    if spec.file is None:
        return DEFAULT_TEXT
    path = base_dir / spec.file
    if not path.is_file():
        raise RecipeError(f"verify.perplexity.file: {spec.file} does not exist")
    return path


def _perplexity_cases(recipe: Any, handle: ModelHandle, run: ModelFn) -> list[Case]:
    """Windows of the held-out text with eager's summed likelihoods (``perplexity_<i>`` cases)."""
    path = perplexity_text(recipe, handle.base_dir)
    if path is None:
        return []
    spec = recipe.verify.perplexity
    text = "".join(text_lines(path, f"verify.perplexity.file: {path}"))
    windows = text_windows(handle.tokenizer, text, spec.window, spec.batch, spec.windows,
                           cache_layout(handle.hf_config))
    return [Case(f"perplexity_{i}", inputs, window_outputs(run, inputs), CaseKind.PERPLEXITY)
            for i, inputs in enumerate(windows)]


def _accuracy_digest(recipe: Any, base_dir: Path) -> str | None:
    spec = recipe.verify.accuracy
    if spec is None:
        return None
    path = base_dir / spec.file
    if not path.is_file():
        raise RecipeError(f"verify.accuracy.file: {spec.file} does not exist")
    return sha256_text(canonical_json(spec.model_dump()) + sha256_file(path))


def reference_key(recipe: Any, handle: ModelHandle, base_dir: Path) -> str:
    """Cache key of the reference: model, input settings, corpus contents and library versions."""
    corpus = recipe.inputs.corpus_path
    corpus = corpus if corpus.is_absolute() else base_dir / corpus
    parts = {"model": handle.source_key, "inputs": recipe.inputs.model_dump(mode="json"),
             "verify": recipe.verify.model_dump(mode="json", include={"shapes", "sentence_batches",
                                                                       "sentence_batch_size", "generation",
                                                                       "batch_cases"}),
             "padded_to": padded_length(recipe, handle.max_positions),
             "corpus": sha256_file(corpus) if handle.tokenizer is not None and corpus.is_file() else None,
             "accuracy": _accuracy_digest(recipe, base_dir),
             "versions": library_versions()}
    text = perplexity_text(recipe, base_dir)
    if text is not None:  # decoders only: every other model's key is what it was
        parts["perplexity"] = {"spec": recipe.verify.perplexity.model_dump(mode="json"), "text": sha256_file(text),
                               "visible_tokens": True}
    embedding = embedding_key(recipe, handle)
    if embedding is not None:  # sentence-transformers models only: every other model's key is what it was
        parts["embedding"] = embedding
    return sha256_text(canonical_json(parts))


def check_shape_limits(recipe: Any, handle: ModelHandle) -> None:
    """Reject sequence lengths the model cannot take and shapes whose forward pass would not fit in
    memory (pipeline/core/limits.py), before anything is written."""
    if handle.max_positions:
        _check_positions(recipe, handle.max_positions)
    check_memory(recipe, handle.hf_config, handle.max_positions)


def _check_positions(recipe: Any, max_positions: int) -> None:
    for _batch, seq in recipe.verify.shapes:
        if seq > max_positions:
            raise RecipeError(f"verify.shapes: sequence {seq} exceeds the model's {max_positions} positions")
    for seq in recipe.bench.seqs:
        if seq > max_positions:
            raise RecipeError(f"bench.seqs: sequence {seq} exceeds the model's {max_positions} positions")
    new_tokens = max(recipe.verify.generation.new_tokens,
                     recipe.bench.generation.new_tokens if recipe.bench.generation else 0)
    if recipe.task == "text-generation" and max(recipe.bench.seqs) + new_tokens > max_positions:
        raise RecipeError(f"bench.seqs: a prompt of {max(recipe.bench.seqs)} tokens and {new_tokens} new ones "
                          f"exceed the model's {max_positions} positions")
    if recipe.inputs.export_seq > max_positions:
        raise RecipeError(f"inputs.export_seq: {recipe.inputs.export_seq} exceeds the model's "
                          f"{max_positions} positions")


def _save(folder: Path, key: str, seed: int, cases: list[Case]) -> None:
    arrays: dict[str, Any] = {}
    for case in cases:
        arrays.update({f"{case.name}/inputs/{k}": v for k, v in case.inputs.items()})
        arrays.update({f"{case.name}/outputs/{k}": v for k, v in case.outputs.items()})
        if case.embedding is not None:
            arrays[f"{case.name}/{EMBEDDING_ARRAY}"] = case.embedding
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(folder / FILE, buffer.getvalue())
    write_record(folder / "manifest.json", {"key": key, "seed": seed, "cases": [c.name for c in cases],
                                            "kinds": [c.kind.value for c in cases],
                                            "sha256": sha256_file(folder / FILE)})


def _load(folder: Path, key: str) -> list[Case] | None:
    """The saved cases when the sealed manifest has this key and the .npz is the one it names, else None
    (with a warning when something is there but does not hold up)."""
    manifest = read_record(folder / "manifest.json", "reference manifest")
    path = folder / FILE
    if manifest is None or manifest.get("key") != key:
        return None
    names, kinds = manifest.get("cases"), manifest.get("kinds")
    valid = {kind.value for kind in CaseKind}
    if not (isinstance(names, list) and isinstance(kinds, list) and len(names) == len(kinds)
            and all(isinstance(n, str) for n in names) and all(k in valid for k in kinds)) \
            or path.is_symlink() or not path.is_file() or sha256_file(path) != manifest.get("sha256"):
        log.warning("%s: does not match its manifest; the reference is computed again", folder)
        return None
    try:
        return _read_cases(path, names, kinds)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable (%s); the reference is computed again", path, exc)
        return None


def _read_cases(path: Path, names: list[str], kinds: list[str]) -> list[Case]:
    """The cases of a reference .npz; ValueError for an array that is not plain numbers (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"array {name!r} holds {array.dtype}, not numbers")
    cases = []
    for name, kind in zip(names, kinds, strict=True):
        inputs = {k.split("/")[-1]: v for k, v in arrays.items() if k.startswith(f"{name}/inputs/")}
        outputs = {k.split("/")[-1]: v for k, v in arrays.items() if k.startswith(f"{name}/outputs/")}
        if not inputs or (not outputs and kind != CaseKind.GENERATE.value):
            raise ValueError(f"case {name!r} has no arrays")
        embedding = arrays.get(f"{name}/{EMBEDDING_ARRAY}")
        if (embedding is None) != (kind != CaseKind.EMBEDDING.value):
            raise ValueError(f"case {name!r} ({kind}) {'lacks' if embedding is None else 'has'} an embedding")
        cases.append(Case(name, inputs, outputs, CaseKind(kind), embedding))
    return cases


def reference(recipe: Any, handle: ModelHandle, folder: Path, base_dir: Path, device: str = "cpu") -> list[Case]:
    """The reference cases, loaded from ``folder`` when still valid, else computed from a fresh model."""
    key = reference_key(recipe, handle, base_dir)
    cached = _load(folder, key)
    if cached is not None:
        log.info("reference: reused %d cases from %s", len(cached), folder)
        return cached
    run = Runner(handle, device).open_eager()
    cases = [Case(name, inputs, run(inputs), kind) for name, (kind, inputs) in _cases_inputs(recipe, handle).items()]
    if handle.task == "text-generation":
        cases += _decoding_cases(recipe, handle, run)
    cases += embedding_cases(recipe, handle, run, device)
    _save(folder, key, recipe.inputs.seed, cases)
    log.info("reference: computed %d cases from a fresh eager model", len(cases))
    return cases
