"""The sentence embedding users consume, checked: for a sentence-transformers model, what
``SentenceTransformer.encode`` gives on the eager model, against each artifact's token embeddings pooled
(and normalised) by the model's own head (pipeline/model/sentence.py).

The reference holds two cases of corpus texts tokenized as SentenceTransformer tokenizes them, truncated at
the model's ``max_seq_length`` (not at the recipe's shapes, which may be longer: raw outputs are compared
there too, but nobody pools them): ``embedding_short``, a batch of corpus sentences, and ``embedding_long``,
texts of consecutive corpus sentences longer than ``max_seq_length`` (a third of their tokens cut) with two
short sentences padded to the same length. Each case keeps eager's outputs (compared as every case is) and
SentenceTransformer's embeddings; an artifact passes when the smallest cosine between its pooled embedding
and SentenceTransformer's, over every text, is at least ``min_embedding_cosine``. These cases are judged on the
pooled embedding only: their token-by-token metrics against eager are reported (``tokens``), not gated (at 256
tokens the int8 IR of the MiniLM recipe keeps a token cosine of 0.982 where its pooled embedding keeps 0.996).

When sentence-transformers is not installed, the texts are tokenized by the model's tokenizer at the same
length and the reference embedding is the head over eager's outputs (a test shows the two agree on
all-MiniLM-L6-v2); the report says which (``reference``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from pipeline.core.errors import ModelError, RecipeError
from pipeline.core.limits import MAX_SENTENCE_TOKENS
from pipeline.model.inputs import Inputs, load_sentences, tokenize
from pipeline.model.loading import ModelHandle
from pipeline.model.sentence import TOKEN_EMBEDDINGS, SentenceHead
from pipeline.runtime.runner import ModelFn
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.metrics import combine, compare

log = logging.getLogger(__name__)

MASK = "attention_mask"
SHORT, LONG = "embedding_short", "embedding_long"
MIXED_SHORT = 2  # short sentences padded to max_seq_length beside the long texts
LONG_FACTOR = 1.5  # a long text has more than this many times max_seq_length tokens before truncation
# eager pooled by the head against SentenceTransformer on the same weights: operation order only (eager and
# sdpa attention differ by ~1e-7 on all-MiniLM-L6-v2)
AGREE_COSINE, AGREE_ABS = 0.99999, 1e-4


def embedding_head(recipe: Any, handle: ModelHandle) -> SentenceHead | None:
    """The head whose sentence embedding the gate checks: a sentence-transformers model folder, task
    feature-extraction, with its token embeddings (``last_hidden_state``) and the attention mask among its
    outputs and inputs, and embedding cases asked for; None otherwise."""
    return _head(recipe, handle)[0]


def _head(recipe: Any, handle: ModelHandle) -> tuple[SentenceHead | None, str | None]:
    """(the head whose embedding is checked, or None; why a sentence-transformers model's is not)."""
    verify = recipe.verify
    if handle.task != "feature-extraction" or not (verify.embedding_sentences or verify.embedding_long_texts):
        return None, None
    head = handle.sentence_head  # None but for a packaged model or a model folder
    if head is None:
        return None, None
    if TOKEN_EMBEDDINGS not in handle.output_names or MASK not in handle.input_names:
        return None, (f"the sentence embedding is not checked: it pools {TOKEN_EMBEDDINGS} over {MASK}, and the "
                      f"recipe's inputs.outputs and inputs.names do not both hold them")
    return head, None


def case_length(head: SentenceHead, max_positions: int | None) -> int:
    """The length the embedding cases are truncated at: the head's max_seq_length, within the model's positions."""
    length = head.max_seq_length or max_positions or MAX_SENTENCE_TOKENS
    return min(length, max_positions) if max_positions else length


def sentence_transformers_version() -> str | None:
    """The installed sentence-transformers' version (None: not installed); part of the reference's key."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    try:
        return metadata.version("sentence-transformers")
    except metadata.PackageNotFoundError:
        return None


def _sentence_transformers() -> Any | None:
    """The sentence_transformers module, or None when it cannot be imported."""
    if sentence_transformers_version() is None:
        return None
    try:
        return importlib.import_module("sentence_transformers")
    except ImportError:
        return None


def embedding_key(recipe: Any, handle: ModelHandle) -> dict[str, Any] | None:
    """What the embedding cases depend on besides the model, the corpus and the seed (None: no such cases)."""
    head = embedding_head(recipe, handle)
    if head is None:
        return None
    return {"head": {"pooling": head.pooling, "normalize": head.normalize, "max_seq_length": head.max_seq_length,
                     "pooling_path": head.pooling_path},
            "length": case_length(head, handle.max_positions), "sentences": recipe.verify.embedding_sentences,
            "long_texts": recipe.verify.embedding_long_texts, "sentence_transformers": sentence_transformers_version()}


def pick_texts(sentences: Sequence[str], count: int, long_count: int, length: int,
               count_tokens: Callable[[str], int], seed: int) -> tuple[list[str], list[str]]:
    """(``count`` corpus sentences drawn with ``seed``, ``long_count`` texts of consecutive corpus sentences,
    each of more than ``LONG_FACTOR`` times ``length`` tokens)."""
    n = len(sentences)
    order = np.random.default_rng(seed + 2).permutation(n)
    short = [sentences[order[i % n]] for i in range(count)]
    target = int(length * LONG_FACTOR)
    long_texts = []
    for i in range(long_count):
        start, parts = int(order[(count + i) % n]), list[str]()
        while not parts or count_tokens(" ".join(parts)) <= target:
            if len(parts) > 2 * target + 8:  # every sentence adds a token at least: only an empty corpus stops here
                raise RecipeError(f"inputs.corpus: no text of more than {length} tokens can be made from it")
            parts.append(sentences[(start + len(parts)) % n])
        long_texts.append(" ".join(parts))
    return short, long_texts


def _batches(short: list[str], long_texts: list[str]) -> dict[str, list[str]]:
    """The texts of each embedding case: the sentences; the long texts with the shortest sentences."""
    batches = {}
    if short:
        batches[SHORT] = short
    if long_texts:
        batches[LONG] = long_texts + sorted(short, key=len)[:MIXED_SHORT]
    return batches


def _named(features: dict[str, Any], names: Sequence[str]) -> Inputs:
    """SentenceTransformer's tokenized features as the model's named int64 inputs."""
    out = {}
    for name in names:
        if name in features:
            out[name] = np.ascontiguousarray(np.asarray(features[name].cpu()), dtype=np.int64)
        elif name == "token_type_ids":
            out[name] = np.zeros_like(out["input_ids"] if "input_ids" in out else np.asarray(features["input_ids"]),
                                      dtype=np.int64)
        else:
            raise ModelError(f"inputs.names: SentenceTransformer's tokenizer gives no {name!r}")
    return out


def _open(st_module: Any, head: SentenceHead, handle: ModelHandle, length: int, device: str) -> Any:
    """SentenceTransformer on the model folder, with the eager model's weights (random ones included)."""
    st = st_module.SentenceTransformer(str(head.folder), device=device, local_files_only=True)
    if head.max_seq_length is not None and st.max_seq_length != head.max_seq_length:
        raise ModelError(f"{head.folder}: SentenceTransformer reads max_seq_length {st.max_seq_length}, the head "
                         f"{head.max_seq_length}")
    st.max_seq_length = length  # the same, or a missing or too long one held to the model's positions
    if handle.spec.weights == "random":
        eager: Any = handle.load().module.model  # the HFWrapper's transformers model
        st[0].auto_model.load_state_dict(eager.state_dict())
    return st.eval()


def embedding_cases(recipe: Any, handle: ModelHandle, run: ModelFn, device: str = "cpu") -> list[Case]:
    """The embedding cases (none for a model without a sentence head): inputs tokenized as SentenceTransformer
    does, eager's outputs, and SentenceTransformer's embeddings, checked against the head over eager's outputs."""
    head, why_not = _head(recipe, handle)
    if why_not:
        log.warning("%s", why_not)
    if head is None:
        return []
    length = case_length(head, handle.max_positions)
    tokenizer, names = handle.tokenizer, handle.input_names

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])

    short, long_texts = pick_texts(load_sentences(recipe.inputs.corpus_path), recipe.verify.embedding_sentences,
                                   recipe.verify.embedding_long_texts, length, count_tokens, recipe.inputs.seed)
    st_module = _sentence_transformers()
    if st_module is None:
        log.warning("sentence-transformers is not installed: the sentence embedding is checked against the "
                    "model's head (%s pooling) over eager's outputs", head.pooling)
    st = _open(st_module, head, handle, length, device) if st_module is not None else None
    cases = []
    for name, texts in _batches(short, long_texts).items():
        if st is not None:
            prepare = st.preprocess if hasattr(st, "preprocess") else st.tokenize
            inputs = _named(prepare(texts), names)
        else:
            inputs = tokenize(tokenizer, texts, names, max_length=length)
        outputs = run(inputs)
        pooled = head.embed(np.asarray(outputs[TOKEN_EMBEDDINGS], dtype=np.float64), inputs[MASK]).astype(np.float32)
        if st is None:
            cases.append(Case(name, inputs, outputs, CaseKind.EMBEDDING, pooled))
            continue
        reference = np.asarray(st.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                         show_progress_bar=False), dtype=np.float32)
        agree = compare(reference, pooled, None)
        if agree.get("cos_min", -1.0) < AGREE_COSINE or agree.get("max_abs", math.inf) > AGREE_ABS:
            raise ModelError(f"{head.folder}: the sentence head ({_described(head)}) over the eager model's "
                             f"{TOKEN_EMBEDDINGS} does not give SentenceTransformer's embedding (cos_min "
                             f"{agree.get('cos_min', -1.0):.6f}, max_abs {agree.get('max_abs', math.inf):.3g}); "
                             f"its modules are not reproduced")
        cases.append(Case(name, inputs, outputs, CaseKind.EMBEDDING, reference))
    return cases


def _described(head: SentenceHead) -> str:
    return (f"{head.pooling} pooling{', normalised' if head.normalize else ''}, "
            f"max_seq_length {head.max_seq_length}")


def _pooled_metrics(case: Case, out: dict[str, np.ndarray], head: SentenceHead) -> dict[str, Any]:
    """An artifact's pooled embedding on one case against the reference embedding."""
    missing = {"nan": 0, "inf": 0, "max_abs": math.inf, "cos_min": -1.0, "positions": 0}
    mask = case.inputs.get(MASK)
    if case.embedding is None or mask is None:
        return {**missing, "shape_mismatch": "no reference embedding"}
    if TOKEN_EMBEDDINGS not in out:
        return {**missing, "shape_mismatch": "missing output"}
    value = np.asarray(out[TOKEN_EMBEDDINGS])
    if value.ndim != 3 or value.shape[:2] != mask.shape:
        return {**missing, "shape_mismatch": f"{list(value.shape)} instead of {list(mask.shape)} x features"}
    pooled = head.embed(value.astype(np.float64), mask)
    return compare(np.asarray(case.embedding, dtype=np.float64), pooled, None)


def embedding_parity(cases: Sequence[Case], actual: Sequence[dict[str, np.ndarray]], head: SentenceHead | None,
                     bound: float | None) -> tuple[dict[str, Any] | None, list[str]]:
    """(the ``embedding`` entry of an artifact's parity, each way it misses ``bound``): the artifact's token
    embeddings pooled by ``head`` on every embedding case against SentenceTransformer's; (None, []) when the
    reference has no embedding cases."""
    picked = [(case, out) for case, out in zip(cases, actual, strict=True) if case.kind is CaseKind.EMBEDDING]
    if not picked:
        return None, []
    if head is None:
        return None, ["sentence embedding: the reference holds embedding cases, but no sentence head pools them"]
    per_case = {case.name: _pooled_metrics(case, out, head) for case, out in picked}
    metrics = combine(list(per_case.values()))
    tokens = [compare(case.outputs[TOKEN_EMBEDDINGS], out[TOKEN_EMBEDDINGS], case.inputs.get(MASK))
              for case, out in picked if TOKEN_EMBEDDINGS in out and TOKEN_EMBEDDINGS in case.outputs]
    entry = {"output": TOKEN_EMBEDDINGS, "pooling": head.pooling, "normalize": head.normalize,
             "max_seq_length": head.max_seq_length, "longest": max(case.inputs[MASK].shape[1] for case, _ in picked),
             "reference": "SentenceTransformer" if sentence_transformers_version() else "head over eager",
             "min_embedding_cosine": bound, "metrics": metrics, "cases": per_case,
             "tokens": combine(tokens)}  # eager's token embeddings on the same texts, reported, not gated
    missed = []
    if "shape_mismatch" in metrics:
        missed.append(f"sentence embedding: {TOKEN_EMBEDDINGS} {metrics['shape_mismatch']}")
    for bad in ("nan", "inf"):
        if metrics.get(bad):
            missed.append(f"sentence embedding: {metrics[bad]} {bad.upper()} values")
    cos = metrics.get("cos_min", -1.0)
    if bound is not None and cos < bound and "shape_mismatch" not in metrics:
        missed.append(f"sentence embedding: cos_min {cos:.6f} < {bound:.6f} (by {bound - cos:.3g}) against "
                      f"SentenceTransformer's ({_described(head)})")
    return entry, missed
