"""The sections of a recipe besides the chain: inputs, verify (tolerances, the gate), bench, ship."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.model.inputs import DEFAULT_CORPUS

MAX_GRID_POINTS = 64
PRECISIONS = ("fp32", "fp16", "int8", "int4")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputsSpec(Strict):
    """Model inputs and outputs: names, dynamic axes, export shape, and the sentence corpus."""

    names: list[str] = Field(default=["input_ids", "attention_mask", "token_type_ids"],
                             description="Input names, in the order the model takes them.")
    outputs: list[str] | None = Field(default=None, description="Output names (default by task).")
    dynamic_axes: dict[str, dict[int, str]] | None = Field(
        default=None, description="Dynamic axes per input/output (default: batch and sequence on every one).")
    export_batch: int = Field(default=2, ge=1, le=1024, description="Batch size of the export example.")
    export_seq: int = Field(default=16, ge=1, le=65536, description="Sequence length of the export example.")
    corpus: str | None = Field(default=None, description="Sentence file (default: the corpus shipped here).")
    seed: int = Field(default=0, description="Seed for every input the run draws.")

    @property
    def corpus_path(self) -> Path:
        """The sentence file: the recipe's (relative to the working folder), or the bundled corpus."""
        return Path(self.corpus) if self.corpus else DEFAULT_CORPUS


class Tolerance(Strict):
    """Bounds an artifact's outputs must keep against eager PyTorch; None leaves a bound unchecked."""

    max_abs: float | None = Field(default=None, gt=0,
                                  description="Largest absolute error allowed at any kept position.")
    min_cosine: float | None = Field(default=None, ge=-1, le=1,
                                     description="Smallest cosine similarity allowed at any kept position.")
    min_top1: float | None = Field(default=None, ge=0, le=1,
                                   description="Smallest share of rows whose arg-max class matches eager "
                                               "(classification outputs).")
    min_token_match: float | None = Field(default=None, ge=0, le=1,
                                          description="Smallest share of greedily generated tokens equal to "
                                                      "eager generate's, each sequence counted up to its first "
                                                      "difference (text-generation).")
    min_sequences_equal: float | None = Field(default=None, ge=0, le=1,
                                              description="Smallest share of generated sequences equal to eager "
                                                          "generate's in every token a user sees (text-generation).")
    max_perplexity_increase: float | None = Field(
        default=None, ge=0,
        description="Largest relative increase of perplexity on the held-out text over eager's (0.01: 1%; "
                    "text-generation).")
    min_batch_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Batch invariance: smallest cosine, at any kept position, between a row's output computed "
                    "alone and the same row's inside a padded batch (-1 accepts any batch dependence).")
    min_embedding_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Sentence-transformers models: smallest cosine, over the embedding cases' texts, between the "
                    "artifact's pooled (and normalised) sentence embedding and SentenceTransformer.encode's on the "
                    "eager model.")

    def over(self, base: Tolerance) -> Tolerance:
        """This tolerance's bounds where set, ``base``'s elsewhere."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


# The reasoning behind each preset is in the README ("Parity").
DEFAULT_TOLERANCE = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1=1.0, min_token_match=1.0, min_batch_cosine=0.9999,
                      min_embedding_cosine=0.9999, max_perplexity_increase=0.001),
    "fp16": Tolerance(max_abs=2e-2, min_cosine=0.999, min_top1=0.99, min_batch_cosine=0.999,
                      min_embedding_cosine=0.999, max_perplexity_increase=0.005),
    # per-row or per-group int8 meets 0.999 (0.9992 to 0.9997 on MiniLM); one activation scale per tensor,
    # padding and batch-mates included, does not (0.990)
    "int8": Tolerance(max_abs=None, min_cosine=0.99, min_top1=0.98, min_batch_cosine=0.999,
                      min_embedding_cosine=0.99, min_token_match=0.99, max_perplexity_increase=0.01),
    # 4-bit weights move logits far more than int8 ones: the gate is on what users see, the tokens and the
    # perplexity, with the logits' cosine a coarse bound
    "int4": Tolerance(max_abs=None, min_cosine=0.9, min_top1=0.95, min_batch_cosine=0.999,
                      min_embedding_cosine=0.95, min_token_match=0.9, max_perplexity_increase=0.05),
}


class StepVerify(Strict):
    """Tolerance of one step, over its precision's; and of single outputs of it."""

    tolerance: Tolerance = Field(default_factory=Tolerance, description="Bounds for every output of the step.")
    outputs: dict[str, Tolerance] = Field(default_factory=dict, description="Bounds for one output, by name.")


class AccuracySpec(Strict):
    """Task accuracy on a labeled file (text-classification)."""

    file: str = Field(description="CSV (with a header) or JSONL file of texts and labels.")
    text: str = Field(default="text", description="Column / key holding the text.")
    label: str = Field(default="label", description="Column / key holding the label (name or class index).")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N examples.")
    batch: int = Field(default=16, ge=1, le=1024, description="Examples per batch.")


class GenerationSpec(Strict):
    """Greedy generation and decode steps checked against eager (text-generation)."""

    new_tokens: int = Field(default=8, ge=1, le=1024, description="Tokens generated greedily per prompt.")
    prompts: int | None = Field(default=None, ge=1, description="The first N corpus sentences as prompts "
                                                                "(default: all of them).")
    batch: int = Field(default=8, ge=1, le=1024, description="Prompts per batch (left-padded).")
    decode_steps: int = Field(default=4, ge=0, le=1024, description="Decode steps checked for parity, each "
                                                                    "on eager's cache of one sentence batch.")


class PerplexitySpec(Strict):
    """Perplexity on a held-out text, eager's against each artifact's (text-generation)."""

    file: str | None = Field(default=None, description="Text file (default: the held-out text shipped here, "
                                                       "not part of the prompt corpus).")
    window: int = Field(default=128, ge=8, le=4096, description="Tokens per window (one prefill each).")
    batch: int = Field(default=4, ge=1, le=256, description="Windows per call.")
    windows: int | None = Field(default=None, ge=1, description="The first N windows (default: all).")


class BatchCasesSpec(Strict):
    """Cases that show whether a row's output depends on how it is batched (encoders)."""

    sentences: int = Field(default=16, ge=0, le=256,
                           description="Corpus sentences checked each alone (batch 1, no padding) and all together "
                                       "in one batch padded to `padded_to`; 0 leaves these cases out.")
    padded_to: int | None = Field(default=None, ge=1,
                                  description="Length the batch is padded to, as a server pads to a bucket "
                                              "(default: the longest sequence the recipe uses, within the model's).")


class VerifySpec(Strict):
    """Parity check of every artifact against eager PyTorch, and the gate."""

    shapes: list[tuple[int, int]] = Field(default=[(1, 9), (3, 77), (4, 133)],
                                          description="(batch, sequence) shapes of random-token inputs.")
    sentence_batches: int = Field(default=4, ge=0, le=1000, description="Batches of corpus sentences.")
    sentence_batch_size: int = Field(default=8, ge=1, le=1024, description="Sentences per batch.")
    tolerance: dict[Literal["fp32", "fp16", "int8", "int4"], Tolerance] = Field(
        default_factory=dict, description="Tolerance per precision, over the built-in presets.")
    steps: dict[str, StepVerify] = Field(default_factory=dict,
                                         description="Tolerance per step and per output of a step, by step name.")
    exempt: list[str] = Field(default=[], description="Steps exempted from the gate, by name.")
    accuracy: AccuracySpec | None = Field(default=None, description="Task accuracy on a labeled file.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec,
                                       description="Greedy generation and decode steps (text-generation).")
    perplexity: PerplexitySpec | None = Field(default_factory=PerplexitySpec,
                                              description="Perplexity on a held-out text (text-generation; "
                                                          "null: not measured).")
    batch_cases: BatchCasesSpec = Field(default_factory=BatchCasesSpec,
                                        description="Each sentence alone and in a padded batch: batch invariance.")
    embedding_sentences: int = Field(
        default=8, ge=0, le=256,
        description="Sentence-transformers models: corpus sentences (one batch) whose pooled sentence embedding is "
                    "compared with SentenceTransformer.encode's on the eager model (min_embedding_cosine).")
    embedding_long_texts: int = Field(
        default=2, ge=0, le=64,
        description="Sentence-transformers models: texts longer than the model's max_seq_length (consecutive corpus "
                    "sentences), truncated as SentenceTransformer truncates them, in one batch with two of the "
                    "sentences; 0 with embedding_sentences 0 leaves the embedding cases out.")

    @field_validator("shapes")
    @classmethod
    def _positive(cls, shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for batch, seq in shapes:
            if batch < 1 or seq < 1:
                raise ValueError(f"shape ({batch}, {seq}): batch and sequence must be at least 1")
        if len(shapes) > MAX_GRID_POINTS:
            raise ValueError(f"{len(shapes)} shapes: at most {MAX_GRID_POINTS}")
        return shapes

    def tolerance_for(self, step: str, precision: str, output: str) -> Tolerance:
        """The bounds in force: precision preset, then recipe precision, then step, then step output."""
        tol = DEFAULT_TOLERANCE[precision]
        if precision in self.tolerance:
            tol = self.tolerance[precision].over(tol)
        if step in self.steps:
            tol = self.steps[step].tolerance.over(tol)
            if output in self.steps[step].outputs:
                tol = self.steps[step].outputs[output].over(tol)
        return tol


class BestBatchSpec(Strict):
    """Search for the batch size with the highest throughput at one sequence length."""

    seq: int = Field(default=128, ge=1, description="Sequence length of the search.")
    max_batch: int = Field(default=256, ge=1, le=65536, description="Largest batch tried.")
    plateau: float = Field(default=0.05, ge=0, description="Gain below which a doubling counts as no gain "
                                                           "(two in a row stop the search).")
    memory_limit_mb: float | None = Field(default=None, gt=0, description="Stop above this resident memory "
                                                                          "(default: 60% of available memory).")


class RealDataSpec(Strict):
    """The sentence corpus through tokenize and run: fixed padding against batching by length."""

    batch: int = Field(default=16, ge=1, le=4096, description="Sentences per batch.")
    max_length: int = Field(default=128, ge=1, description="Length every batch is padded to in the fixed mode.")


class GenerationBenchSpec(Strict):
    """Greedy generation timed at every batch size and prompt length of the grid (text-generation)."""

    new_tokens: int = Field(default=16, ge=2, le=4096, description="Tokens generated per prompt.")
    repeats: int = Field(default=5, ge=1, le=100000, description="Generations per point, at least "
                                                                 "(and until min_seconds).")


class BenchSpec(Strict):
    """Latency and throughput protocol and grid."""

    enabled: bool = Field(default=True, description="Benchmark the eager model and every artifact.")
    batches: list[int] = Field(default=[1, 8], description="Batch sizes.")
    seqs: list[int] = Field(default=[16, 128], description="Sequence lengths.")
    decoder_points: Literal["prefill", "decode"] = Field(
        default="prefill",
        description="What a decoder's grid point (batch, seq) times in the interleaved rounds: a prefill of seq "
                    "tokens with an empty cache, or one decode step (a new token per row) after a cache of seq "
                    "positions, the per-token latency users wait for (text-generation).")
    threads: int = Field(default=2, ge=1, le=1024, description="Intra-op threads for torch and onnxruntime "
                                                               "(inter-op: 1).")
    warmup: int = Field(default=3, ge=0, le=100000, description="Warm-up calls, at least.")
    warmup_seconds: float = Field(default=0.5, ge=0, le=600, description="Warm-up time, at least.")
    min_repeats: int = Field(default=20, ge=1, le=1000000, description="Timed calls per point, at least.")
    min_seconds: float = Field(default=1.0, ge=0, le=3600, description="Timed seconds per point, at least.")
    max_seconds: float = Field(default=8.0, gt=0, le=3600, description="Timed seconds per point, at most.")
    throughput_seconds: float = Field(default=1.0, gt=0, le=3600,
                                      description="Seconds of back-to-back calls for measured throughput.")
    cv_threshold: float = Field(default=0.10, gt=0, description="Coefficient of variation of single timed calls "
                                                                "above which a measurement outside the rounds "
                                                                "(generation, a repair's timing) is flagged.")
    rerun_tolerance: float = Field(default=0.10, gt=0, description="p50 change from the previous run above "
                                                                   "which a point is flagged unstable.")
    max_round_spread: float = Field(
        default=0.10, gt=0, description="Spread of a target's per-round medians at a point (interquartile range "
                                        "over the median) above which the point is flagged unstable: its median "
                                        "moved between rounds, so measure again before trusting it. Quiet 2-core "
                                        "machines measured 0.01 to 0.09 (single calls' CV: 0.02 to 0.8).")
    max_baseline_spread: float = Field(
        default=3.0, gt=1, description="The baseline's slowest round over its fastest at a point past which the "
                                       "point is measured again, and then not measured: quiet, 1.14 at most.")
    grid: Literal["default", "full"] = Field(
        default="default", description="default: the smallest batch at every sequence length, and the ship point "
                                       "(ship.fastest_at); full (--full-grid): every batch with every sequence "
                                       "length, and each target's best batch, memory and real-data runs.")
    rounds: int = Field(default=8, ge=2, le=1000,
                        description="Interleaved rounds per grid point: each round measures every target once, in "
                                    "an order rotated each round; ratios over eager are taken within a round.")
    # the names before 'ship point' was the one name for it are still read
    ship_point_rounds: int = Field(validation_alias=AliasChoices("ship_point_rounds", "headline_rounds"),
                                   default=24, ge=2, le=1000,
                                   description="Interleaved rounds at the ship point (ship.fastest_at), where the "
                                               "ship rule compares intervals: more rounds of shorter blocks narrow "
                                               "them.")
    ship_point_generations: int = Field(validation_alias=AliasChoices("ship_point_generations", "headline_generations"),
                                        default=3, ge=1, le=100,
                                        description="Generations of worker processes the ship point's rounds are "
                                                    "spread over (every worker is started again between them), so "
                                                    "its interval holds the variation between processes too.")
    pause_seconds: float = Field(default=0.02, ge=0, le=60, description="Pause before each target's turn in a "
                                                                       "round, so spinning thread pools park.")
    max_steal: float = Field(default=0.05, ge=0, le=1, description="CPU steal (share of all CPU time) above which "
                                                                   "a round is dropped and run again.")
    max_others_cpu: float = Field(default=0.15, ge=0, le=1,
                                  description="Share of the cores other processes may use during a round before it "
                                              "is dropped and run again.")
    redo_rounds: int = Field(default=3, ge=0, le=1000, description="Extra rounds a point may run, at most, to "
                                                                   "replace dropped ones (or a third of its rounds, "
                                                                   "when that is more).")
    interval_tolerance: float = Field(default=0.10, gt=0, description="A ratio whose 95% interval is wider than "
                                                                      "this share of it either side is flagged.")
    failed_steps: Literal["ship_point", "grid"] = Field(
        default="ship_point", description="Where a step that failed its gate is benchmarked: at the ship point "
                                           "only (ship.fastest_at, else the grid's first point; no extras), or over "
                                           "the whole grid like the others.")
    best_batch: BestBatchSpec | None = Field(default_factory=BestBatchSpec,
                                             description="Best batch size search (null: skip).")
    real_data: RealDataSpec | None = Field(
        default_factory=RealDataSpec, description="Corpus throughput, fixed padding against by length (null: skip).")
    generation: GenerationBenchSpec | None = Field(
        default_factory=GenerationBenchSpec,
        description="Time to first token, per-token latency and tokens/s at each (batch, prompt length) of the "
                    "grid (text-generation; null: skip).")
    timeout_seconds: float = Field(default=1800, gt=0, description="Time limit of one target's benchmark.")

    @field_validator("failed_steps", mode="before")
    @classmethod
    def _older_name(cls, value: Any) -> Any:
        return "ship_point" if value == "headline" else value

    @model_validator(mode="after")
    def _grid(self) -> BenchSpec:
        for value in (*self.batches, *self.seqs):
            if value < 1:
                raise ValueError(f"batch sizes and sequence lengths must be at least 1, got {value}")
        if not self.batches or not self.seqs:
            raise ValueError("the grid needs at least one batch size and one sequence length")
        if len(self.batches) * len(self.seqs) > MAX_GRID_POINTS:
            raise ValueError(f"{len(self.batches) * len(self.seqs)} grid points: at most {MAX_GRID_POINTS}")
        if max(self.batches) > 4096:
            raise ValueError(f"batch {max(self.batches)}: at most 4096")
        return self


class ShipSpec(Strict):
    """Which artifact is shipped: a named step, the fastest that passes at a point, or the last that passes."""

    step: str | None = Field(default=None, description="Step to ship (default: the last that passes).")
    fastest_at: tuple[int, int] | None = Field(
        default=None, description="[batch, seq]: ship the passing step with the lowest p50 at this bench point.")
    triton: bool = Field(
        default=False, description="An ONNX bundle also holds a Triton Inference Server model repository "
                                   "(triton/<recipe>/: config.pbtxt and a second copy of the model).")

    @model_validator(mode="after")
    def _one_rule(self) -> ShipSpec:
        if self.step and self.fastest_at:
            raise ValueError("give ship.step or ship.fastest_at, not both")
        return self


