"""The sentence embedding users consume: for a sentence-transformers model the reference holds texts tokenized
as SentenceTransformer tokenizes them (truncated at max_seq_length) with SentenceTransformer's embeddings, and
the gate pools each artifact's token embeddings with the model's head and compares them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.model.inputs import load_sentences
from pipeline.model.loading import ModelHandle
from pipeline.model.sentence import SentenceHead
from pipeline.model.spec import packaged_path
from pipeline.recipe.load import load_recipe
from pipeline.recipe.schema import Tolerance
from pipeline.runtime.runner import Runner
from pipeline.verify import embedding as embedding_module
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.embedding import LONG, SHORT, embedding_key
from pipeline.verify.parity import check
from pipeline.verify.reference import reference, reference_key

MINILM = "packaged:all-MiniLM-L6-v2"
SMALL_VERIFY = {"shapes": [[1, 9]], "sentence_batches": 0, "batch_cases": {"sentences": 0}}
TINY_LENGTH = 32  # the tiny sentence-transformers model's max_seq_length, under its 128 positions
OLD_PARITY_KEYS = {"passed", "metrics", "tolerance", "failures", "vs_parent", "cases", "batch_invariance"}
OLD_TOLERANCE_KEYS = {"max_abs", "min_cosine", "min_top1", "min_token_match", "min_batch_cosine"}


@pytest.fixture(scope="module")
def tiny_st_folder(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> Path:
    """A tiny random BERT saved as a sentence-transformers model: mean pooling, normalised, max_seq_length 32,
    the packaged MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-st")
    torch.manual_seed(0)
    config = {k: v for k, v in json.loads(tiny_bert_config.read_text()).items() if k != "model_type"}
    BertModel(BertConfig(**config)).eval().save_pretrained(folder)
    minilm = packaged_path("all-MiniLM-L6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config["hidden_size"], "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": TINY_LENGTH,
                                                                  "do_lower_case": False}))
    return folder


def _recipe(folder: Path, source: str, passes: list | None = None, **model: Any) -> Any:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"source": source, **model}, "task": "feature-extraction",
                                    "passes": passes or [{"onnx_export": {}}], "verify": SMALL_VERIFY}))
    return path


def _setup(tmp_path: Path, source: str, *overrides: str, **model: Any) -> tuple[Any, ModelHandle]:
    recipe = load_recipe(_recipe(tmp_path, source, **model), list(overrides))
    return recipe, ModelHandle(recipe.model, recipe.task, recipe.inputs.names, recipe.output_names, tmp_path)


def _embedding_cases(cases: list[Case]) -> dict[str, Case]:
    return {case.name: case for case in cases if case.kind is CaseKind.EMBEDDING}


def _pooled(head: SentenceHead, case: Case, hidden: np.ndarray | None = None) -> np.ndarray:
    hidden = case.outputs["last_hidden_state"] if hidden is None else hidden
    return head.embed(np.asarray(hidden, dtype=np.float64), case.inputs["attention_mask"])


@pytest.mark.slow  # loads the packaged MiniLM in SentenceTransformer and here (about 6 s)
def test_the_head_over_eager_gives_sentence_transformers_embedding_on_the_packaged_minilm(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    recipe, handle = _setup(tmp_path, MINILM)
    head = handle.sentence_head
    assert head is not None and (head.pooling, head.normalize, head.max_seq_length) == ("mean", True, 256)
    assert SentenceTransformer(str(head.folder), device="cpu").max_seq_length == head.max_seq_length
    # the reference's embedding cases hold SentenceTransformer(folder).encode's embeddings of their texts, and
    # the head over a fresh eager model's outputs on the same tokens gives them
    cases = _embedding_cases(reference(recipe, handle, tmp_path / "reference", tmp_path))
    assert set(cases) == {SHORT, LONG}
    for case in cases.values():
        assert case.embedding is not None and np.abs(_pooled(head, case) - case.embedding).max() < 1e-6
    long = cases[LONG]
    assert long.inputs["input_ids"].shape == (4, 256)  # two long texts and two short sentences
    assert long.inputs["attention_mask"].sum(axis=1)[:2].tolist() == [256, 256]
    assert (long.inputs["input_ids"][:2, -1] == handle.tokenizer.sep_token_id).all()  # cut, then [SEP]
    assert (long.inputs["attention_mask"].sum(axis=1)[2:] < 64).all()  # the short ones padded to 256


def test_a_long_text_is_truncated_at_max_seq_length_though_the_recipe_s_shapes_are_longer(
        tiny_st_folder: Path, tmp_path: Path) -> None:
    recipe, handle = _setup(tmp_path, str(tiny_st_folder), "verify.shapes=[[2, 100]]")
    cases = reference(recipe, handle, tmp_path / "reference", tmp_path)
    assert next(c for c in cases if c.name == "random_b2_s100").inputs["input_ids"].shape == (2, 100)
    embedding = _embedding_cases(cases)
    long, short = embedding[LONG], embedding[SHORT]
    lengths = long.inputs["attention_mask"].sum(axis=1)
    assert long.inputs["input_ids"].shape == (4, TINY_LENGTH) and lengths[:2].tolist() == [TINY_LENGTH] * 2
    assert short.inputs["input_ids"].shape[0] == 8 and short.inputs["input_ids"].shape[1] <= TINY_LENGTH
    # the texts behind the long rows are half as long again as max_seq_length, and cut there
    _, texts = embedding_module.pick_texts(load_sentences(), 8, 2, TINY_LENGTH,
                                           lambda text: len(handle.tokenizer(text)["input_ids"]), seed=0)
    for row, text in enumerate(texts):
        ids = handle.tokenizer(text)["input_ids"]
        assert len(ids) > 1.5 * TINY_LENGTH
        assert long.inputs["input_ids"][row, :-1].tolist() == ids[:TINY_LENGTH - 1]
        assert long.inputs["input_ids"][row, -1] == handle.tokenizer.sep_token_id
    for case in embedding.values():
        assert np.abs(_pooled(handle.sentence_head, case) - case.embedding).max() < 1e-6


def test_picked_long_texts_exceed_max_seq_length_by_half() -> None:
    sentences = [f"sentence number {i} says a little." for i in range(50)]
    short, long = embedding_module.pick_texts(sentences, 3, 2, 40, lambda text: len(text.split()), seed=0)
    assert len(short) == 3 and set(short) <= set(sentences)
    assert len(long) == 2 and all(len(text.split()) > 60 for text in long)


def test_without_sentence_transformers_the_head_over_eager_is_the_reference_on_the_same_tokens(
        tiny_st_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, handle = _setup(tmp_path, str(tiny_st_folder))
    with_st = _embedding_cases(reference(recipe, handle, tmp_path / "with", tmp_path))
    monkeypatch.setattr(embedding_module, "sentence_transformers_version", lambda: None)
    monkeypatch.setattr(embedding_module, "_sentence_transformers", lambda: None)
    without = _embedding_cases(reference(recipe, handle, tmp_path / "without", tmp_path))
    assert set(without) == set(with_st) == {SHORT, LONG}
    for name, case in without.items():
        assert all(np.array_equal(case.inputs[k], with_st[name].inputs[k]) for k in case.inputs)
        assert np.abs(case.embedding - with_st[name].embedding).max() < 1e-6


def test_random_weights_are_the_eager_model_s_in_sentence_transformers_too(tiny_st_folder: Path,
                                                                           tmp_path: Path) -> None:
    recipe, handle = _setup(tmp_path, str(tiny_st_folder), weights="random", seed=7)
    cases = _embedding_cases(reference(recipe, handle, tmp_path / "reference", tmp_path))  # raises if they differ
    assert set(cases) == {SHORT, LONG}


def _fake_case(drift: float = 0.0) -> tuple[Case, np.ndarray, SentenceHead]:
    rng = np.random.default_rng(0)
    mask = np.ones((3, 6), dtype=np.int64)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    hidden = rng.standard_normal((3, 6, 8)).astype(np.float32)
    head = SentenceHead("mean", True, 6, Path("."), "1_Pooling")
    expected = head.embed(hidden.astype(np.float64), mask).astype(np.float32)
    case = Case("embedding_short", {"input_ids": np.ones_like(mask), "attention_mask": mask},
                {"last_hidden_state": hidden}, CaseKind.EMBEDDING, expected)
    out = hidden.copy()
    out[:, :, 0] += drift  # every kept token of every text moves the same way: its pooled direction drifts
    out[mask == 0] = 1e6  # padding is never pooled
    return case, out, head


BOUNDS = Tolerance(max_abs=1e-4, min_cosine=0.99999, min_embedding_cosine=0.9999)


def _check(drift: float = 0.0, bounds: Tolerance = BOUNDS, **kwargs: Any) -> Any:
    """The gate on a plain case, exact, and an embedding case whose token embeddings drift by ``drift``."""
    case, out, head = _fake_case(drift)
    plain = Case("sentences_0", case.inputs, case.outputs)
    return check([plain, case], [case.outputs, {"last_hidden_state": out}], None, lambda _name: bounds,
                 **{"head": head, **kwargs})


def test_the_embedding_metric_passes_an_exact_artifact_and_fails_a_drifting_one() -> None:
    parity = _check()
    assert parity.passed and parity.embedding is not None
    assert parity.embedding["metrics"]["cos_min"] > 0.999999 and parity.embedding["metrics"]["positions"] == 3
    report = parity.to_json()
    assert report["embedding"]["min_embedding_cosine"] == 0.9999 and set(report["embedding"]["cases"]) == {SHORT}
    assert report["tolerance"]["last_hidden_state"]["min_embedding_cosine"] == 0.9999

    drifted = _check(drift=0.3)
    assert not drifted.passed and drifted.embedding is not None
    assert drifted.embedding["metrics"]["cos_min"] < 0.9999
    assert len(drifted.failures) == 1 and drifted.failures[0].startswith("sentence embedding: cos_min "), \
        drifted.failures
    assert "against SentenceTransformer's (mean pooling, normalised, max_seq_length 6)" in drifted.failures[0]
    # the embedding case is judged on its pooled embedding alone: its token errors are reported beside it
    assert set(drifted.per_case["last_hidden_state"]) == {"sentences_0"}
    assert drifted.metrics["last_hidden_state"]["max_abs"] == 0.0
    assert abs(drifted.embedding["tokens"]["max_abs"] - 0.3) < 1e-6
    # the same drift passes a bound relaxed for the step's output
    assert _check(drift=0.3, bounds=BOUNDS.model_copy(update={"min_embedding_cosine": 0.9})).passed


def test_a_missing_output_a_nan_or_no_head_fails_the_embedding() -> None:
    case, out, head = _fake_case()
    other = check([case], [{"pooler_output": out[:, 0]}], None, lambda _name: BOUNDS, head=head)
    assert not other.passed and "sentence embedding: last_hidden_state missing output" in other.failures
    out[0, 0, 0] = np.nan
    nan = check([case], [{"last_hidden_state": out}], None, lambda _name: BOUNDS, head=head)
    assert not nan.passed and any(line.startswith("sentence embedding: ") and "NAN" in line for line in nan.failures)
    headless = _check(head=None)
    assert not headless.passed and headless.failures == [
        "sentence embedding: the reference holds embedding cases, but no sentence head pools them"]


def test_a_model_without_a_sentence_head_gets_no_embedding_cases_and_the_same_parity_json(
        write_tiny_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = load_recipe(write_tiny_recipe("tiny", ["onnx_export"], verify=SMALL_VERIFY))
    handle = ModelHandle(recipe.model, recipe.task, recipe.inputs.names, recipe.output_names, tmp_path)
    assert embedding_key(recipe, handle) is None
    cases = reference(recipe, handle, tmp_path / "reference", tmp_path)
    assert cases and all(case.kind is not CaseKind.EMBEDDING and case.embedding is None for case in cases)
    parity = check(cases, [case.outputs for case in cases], None,
                   lambda output: recipe.verify.tolerance_for("onnx_export", "fp32", output),
                   head=SentenceHead("mean", True, 8, Path("."), "1_Pooling"))
    report = parity.to_json()
    assert parity.passed and parity.embedding is None and set(report) == OLD_PARITY_KEYS
    assert set(report["tolerance"]["last_hidden_state"]) == OLD_TOLERANCE_KEYS


def test_the_reference_key_holds_the_embedding_cases(tiny_st_folder: Path, tmp_path: Path) -> None:
    off, handle = _setup(tmp_path, str(tiny_st_folder), "verify.embedding_sentences=0",
                         "verify.embedding_long_texts=0")
    assert embedding_key(off, handle) is None
    old = reference(off, handle, tmp_path / "reference", tmp_path)  # a reference without embedding cases
    assert not _embedding_cases(old)
    on, handle = _setup(tmp_path, str(tiny_st_folder))
    fewer, _ = _setup(tmp_path, str(tiny_st_folder), "verify.embedding_long_texts=1")
    keys = {reference_key(off, handle, tmp_path), reference_key(on, handle, tmp_path),
            reference_key(fewer, handle, tmp_path)}
    assert len(keys) == 3
    assert set(_embedding_cases(reference(on, handle, tmp_path / "reference", tmp_path))) == {SHORT, LONG}
    again = reference(on, handle, tmp_path / "reference", tmp_path)  # reused, embeddings and all
    assert all(case.embedding is not None for case in _embedding_cases(again).values())

    # the head's max_seq_length is part of it
    longer = tmp_path / "longer"
    shutil.copytree(tiny_st_folder, longer)
    (longer / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    recipe, other = _setup(tmp_path, str(longer))
    assert embedding_key(recipe, other)["length"] == 64 and embedding_key(on, handle)["length"] == TINY_LENGTH
    assert reference_key(recipe, other, tmp_path) != reference_key(on, handle, tmp_path)


def _drifting(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make ``step``'s artifact move every token of every text the same way."""
    real = Runner.open

    def open_(self: Runner, artifact: Any) -> Callable[..., dict[str, np.ndarray]]:
        fn = real(self, artifact)
        if artifact.step_folder != step:
            return fn

        def drifted(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = fn(inputs)
            return {k: v + np.float32(0.3) * np.abs(v).mean() for k, v in out.items()}
        return drifted

    monkeypatch.setattr(Runner, "open", open_)


def test_the_run_reports_the_embedding_and_its_gate_fails_a_drifting_artifact(
        tiny_st_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, str(tiny_st_folder))
    assert main(["optimize", str(recipe), "--no-bench", "--out", "out"]) == 0
    parity = json.loads(Path("out/report.json").read_text())["artifacts"][0]["parity"]
    assert parity["passed"] and parity["embedding"]["metrics"]["cos_min"] > 0.9999
    assert set(parity["embedding"]["cases"]) == {SHORT, LONG} and parity["embedding"]["max_seq_length"] == TINY_LENGTH

    _drifting(monkeypatch, "01_onnx_export")
    loose = "verify.steps.onnx_export.tolerance={max_abs: 100.0, min_cosine: -1.0}"
    assert main(["optimize", str(recipe), "--no-bench", "--out", "out", "--set", loose]) == 1
    parity = json.loads(Path("out/report.json").read_text())["artifacts"][0]["parity"]
    assert parity["failures"] and all(line.startswith("sentence embedding: ") for line in parity["failures"])
