"""One benchmark target in its own process: `python -m pipeline.bench_worker SPEC.json OUT.json`.

Each target (the eager model, or one artifact) gets a fresh process, so memory and thread pools
do not leak from one to the next: onnxruntime's intra-op threads keep spinning after a run, and an
eager call timed right after one in the same process ran at half speed.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.fingerprint import fingerprint
from pipeline.gen_bench import generation_rows
from pipeline.generation import INPUTS, CacheLayout
from pipeline.inputs import Inputs, load_sentences, random_tokens, tokenize
from pipeline.timing import Protocol, latencies, summarize, throughput, warm_up


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a worker would
    report its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def gpu_peak_mb(device: str) -> float | None:
    """Peak GPU memory allocated by torch in this process (None on CPU)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _open_engine(spec: dict[str, Any]) -> Any:
    from pipeline.engines import OrtEngine, TorchEngine
    from pipeline.model import ModelHandle, ModelSpec

    device, threads = spec["device"], spec["threads"]
    if spec["format"] == "onnx":
        return OrtEngine(Path(spec["path"]), device, threads)
    import torch

    if spec["format"] == "torchscript":
        module = torch.jit.load(spec["path"], map_location=device)
    else:
        handle = ModelHandle(ModelSpec(**spec["model"]), spec["task"], spec["input_names"], spec["output_names"],
                             Path(spec["base_dir"]))
        module = handle.load().module
    return TorchEngine(module, spec["input_names"], device)


def _grid_inputs(spec: dict[str, Any], batch: int, seq: int) -> Inputs:
    if spec.get("examples"):
        from pipeline.inputs import resize_examples

        examples = {k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in spec["examples"].items()}
        return resize_examples(examples, batch)
    if spec.get("cache"):  # a decoder's forward point is a prefill: the prompt with an empty cache
        tokens = random_tokens(list(INPUTS), batch, seq, spec["vocab_size"], seed=batch * 1000 + seq, pad_fraction=0)
        return {**tokens, **CacheLayout(**spec["cache"]).empty(batch)}
    return random_tokens(spec["input_names"], batch, seq, spec["vocab_size"], seed=batch * 1000 + seq, pad_fraction=0)


def measure_point(engine: Any, inputs: Inputs, protocol: Protocol, tokens: int) -> dict[str, Any]:
    """Latency percentiles and measured throughput at one (batch, seq) point."""
    call = engine.stage(inputs)
    warm_up(call, engine.timer, protocol)
    row = summarize(latencies(call, engine.timer, protocol), protocol.cv_threshold)
    calls, seconds = throughput(call, engine.sync, protocol)
    batch = next(iter(inputs.values())).shape[0]
    row.update(throughput=calls * batch / seconds, tokens_per_s=calls * tokens / seconds, throughput_calls=calls)
    return row


def best_batch(engine: Any, spec: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """Double the batch from 1 until throughput stops rising (plateau), memory runs out, or the cap."""
    cfg = spec["best_batch"]
    seq, limit = cfg["seq"], cfg["memory_limit_mb"]
    quick = Protocol(warmup=2, warmup_seconds=0.1, throughput_seconds=protocol.throughput_seconds)
    curve, best, stalls, batch, stop = [], None, 0, 1, "max_batch"
    while batch <= cfg["max_batch"]:
        try:
            call = engine.stage(_grid_inputs(spec, batch, seq))
            warm_up(call, engine.timer, quick)
            calls, seconds = throughput(call, engine.sync, quick)
        except MemoryError:
            stop = "out of memory"
            break
        except RuntimeError as exc:  # CUDA and onnxruntime report allocation failures as RuntimeError
            if "memory" not in str(exc).lower() and "alloc" not in str(exc).lower():
                raise
            stop = "out of memory"
            break
        point = {"batch": batch, "throughput": calls * batch / seconds, "rss_mb": current_rss_mb()}
        curve.append(point)
        if best is None or point["throughput"] > best["throughput"] * (1 + cfg["plateau"]):
            best, stalls = point, 0
        else:
            stalls += 1
        if stalls >= 2:
            stop = "plateau"
            break
        if point["rss_mb"] > limit:
            stop = f"memory limit {limit:.0f} MB"
            break
        batch *= 2
    assert best is not None
    return {"seq": seq, "batch": best["batch"], "throughput": best["throughput"], "stopped_by": stop, "curve": curve}


def pad_batch(encoded: Any, rows: list[int], names: list[str], pad_id: int) -> Inputs:
    """The tokenized rows, padded to the longest of them, as model inputs."""
    width = max(len(encoded["input_ids"][j]) for j in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, j in enumerate(rows):
        row = encoded["input_ids"][j]
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: values[name] for name in names}


def real_data(engine: Any, spec: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """Sentences per second through tokenize and run: fixed padding against batching by length."""
    from transformers import AutoTokenizer

    cfg = spec["real_data"]
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"], local_files_only=True)
    sentences = load_sentences(Path(cfg["corpus"]))
    names, batch, max_len = spec["input_names"], cfg["batch"], cfg["max_length"]

    def padded(texts: list[str]) -> None:
        for i in range(0, len(texts), batch):
            engine.run_host(tokenize(tokenizer, texts[i:i + batch], names, seq=max_len))

    def by_length(texts: list[str]) -> None:
        # Tokenize once, sort by length, pad each batch to its longest: no second tokenizer pass.
        encoded = tokenizer(texts, truncation=True, max_length=max_len)
        order = sorted(range(len(texts)), key=lambda j: len(encoded["input_ids"][j]))
        for i in range(0, len(order), batch):
            engine.run_host(pad_batch(encoded, order[i:i + batch], names, tokenizer.pad_token_id or 0))

    out: dict[str, Any] = {"sentences": len(sentences), "batch": batch, "max_length": max_len}
    for name, run_all in (("padded", padded), ("sorted", by_length)):
        run_all(sentences[: 2 * batch])  # warm-up on two batches
        passes, start = 0, time.perf_counter()
        while passes < 1 or time.perf_counter() - start < protocol.min_seconds:
            run_all(sentences)
            passes += 1
        out[f"{name}_sentences_per_s"] = passes * len(sentences) / (time.perf_counter() - start)
    out["speedup_sorted_over_padded"] = out["sorted_sentences_per_s"] / out["padded_sentences_per_s"]
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Benchmark one target as the spec says; returns rows in the report's ROW shape plus extras."""
    sys.path[:0] = [p for p in spec.get("sys_path", []) if p not in sys.path]
    threads = spec["threads"]
    if spec["format"] != "onnx":  # an ONNX target never imports torch, so its memory is its own
        import torch

        torch.set_num_threads(threads)
    protocol = Protocol(**spec["protocol"])
    start = time.perf_counter()
    engine = _open_engine(spec)
    result: dict[str, Any] = {"target": spec["target"], "load_seconds": time.perf_counter() - start,
                              "fingerprint": fingerprint(threads, spec["device"]), "rows": []}
    for batch, seq in spec["grid"]:
        row = measure_point(engine, _grid_inputs(spec, batch, seq), protocol, tokens=batch * seq)
        row.update(batch=batch, seq=seq, peak_rss_mb=peak_rss_mb(), peak_gpu_mb=gpu_peak_mb(spec["device"]))
        result["rows"].append(row)
    if spec.get("best_batch"):
        result["best_batch"] = best_batch(engine, spec, protocol)
    # Peak memory of the model alone: the real-data run below loads a tokenizer (and with it torch).
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_gpu_mb"] = gpu_peak_mb(spec["device"])
    if spec.get("generation"):
        result["generation"] = generation_rows(engine.host_outputs, spec, protocol)
    if spec.get("real_data") and spec.get("tokenizer_dir"):
        result["real_data"] = real_data(engine, spec, protocol)
        result["real_data"]["peak_rss_mb"] = peak_rss_mb()
    return result


def main(argv: list[str], run_spec: Callable[[dict[str, Any]], dict[str, Any]] = run) -> int:
    """Read the spec, benchmark (with ``run_spec``), write the result JSON."""
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    result = run_spec(spec)
    Path(argv[1]).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
