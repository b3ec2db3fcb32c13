"""What the benchmark hands on, typed: the spec a worker process is started with, one result row per grid
point, a target's whole result, a ratio over eager, and which of a row's fields each reader keeps.

They cross a process boundary as JSON, so they are TypedDicts (plain dicts at run time, checked by
the type checker), not classes.
"""

from __future__ import annotations

from typing import Any, TypedDict


class WorkerSpec(TypedDict, total=False):
    """Everything a worker process needs to load one target and measure it (pipeline.bench.worker)."""

    target: str  # "eager" or a step name
    format: str  # an artifact Format value
    path: str | None  # the artifact's main file; None for eager
    model: dict[str, Any]  # the recipe's model spec
    task: str
    base_dir: str
    input_names: list[str]
    output_names: list[str]
    device: str
    threads: int
    grid: list[list[int]]  # [batch, seq] points
    protocol: dict[str, Any]  # pipeline.runtime.timing.Protocol's fields
    vocab_size: int  # with a tokenizer
    tokenizer_dir: str
    tokenizer_gguf: str  # the GGUF file in tokenizer_dir the tokenizer is stored in, when it is
    examples: dict[str, dict[str, Any]]  # a factory model's example inputs: {name: {"data", "dtype"}}
    sys_path: list[str]  # where a factory model imports from
    best_batch: dict[str, Any]  # the recipe's best-batch search, with its memory limit
    real_data: dict[str, Any]  # the recipe's real-data benchmark, with its corpus
    cache: dict[str, Any]  # a decoder's cache layout
    decoder_points: str  # a decoder's grid point (batch, seq): "prefill" of seq tokens or "decode" after seq
    generation: dict[str, Any]  # a decoder's generation benchmark


class BenchRow(TypedDict, total=False):
    """One target at one (batch, seq) point: latency percentiles over every timed call of the rounds that
    count, spread, measured throughput, memory, and the per-round medians the ratios come from."""

    batch: int
    seq: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    cv: float
    repeats: int
    unstable: bool
    unstable_reasons: list[str]
    p50_change_from_previous: float
    throughput: float  # samples/s
    tokens_per_s: float
    throughput_calls: int
    rounds: int
    round_p50_ms: list[float]
    round_spread: float  # interquartile range of round_p50_ms over their median: the row's stability
    peak_rss_mb: float
    peak_gpu_mb: float | None
    measured: bool  # False: the point could not be measured (why: the last of ``unstable_reasons``)


class BenchResult(TypedDict, total=False):
    """One target's result in a benchmark session (``bench/<target>.json``, report.json's ``bench``)."""

    target: str
    rows: list[BenchRow]
    error: str  # why the target could not be measured (then its rows may be missing)
    key: str  # the cache key: artifact, protocol, grid, machine
    session: str  # the session it was measured in; ratios pair only results of one session
    cv_threshold: float
    load_seconds: float | None
    load_cpu_seconds: float | None
    fingerprint: dict[str, Any] | None
    best_batch: dict[str, Any]  # the extras: the best-batch search, memory, generation, the real-data run
    peak_rss_mb: float
    peak_gpu_mb: float | None
    real_data: dict[str, Any]
    generation: list[dict[str, Any]]


class Ratio(TypedDict, total=False):
    """A target's speed-up over the baseline at one point: the median of its per-round ratios, a 95%
    interval, and the noise of the rounds behind it (report.json's ``ratios``)."""

    target: str
    baseline: str
    batch: int
    seq: int
    ratio: float
    ci95: list[float]  # [low, high]
    rounds: int
    generations: int
    unstable: bool
    reasons: list[str]
    dropped: int
    steal_max: float
    others_cpu_max: float
    measured: bool  # False: the point could not be measured (why: the first of ``reasons``); no interval


# report.json's ROW (DESIGN.md's contract), as the bundle's manifest carries it
CONTRACT_ROW_KEYS = ("batch", "seq", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "peak_rss_mb")
# what report.json keeps of a row: the contract and the spread, stability and rounds behind it
REPORT_ROW_KEYS = (*CONTRACT_ROW_KEYS[:6], "std_ms", "min_ms", "cv", "unstable", "unstable_reasons",
                   "p50_change_from_previous", "repeats", "throughput", "tokens_per_s", "peak_rss_mb", "peak_gpu_mb",
                   "rounds", "round_p50_ms", "round_spread", "measured")
