"""One benchmark target in its own long-lived process: `python -m pipeline.bench.worker SPEC.json`.

Each target (the eager model, or one artifact) gets its own process, so memory and thread pools do
not leak from one to the next: onnxruntime's intra-op threads keep spinning after a run, and an
eager call timed right after one in the same process ran at half speed. The process loads its target
once, then measures blocks of timed calls whenever the orchestrator's rounds ask (pipeline.bench.pool).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.bench.fingerprint import fingerprint
from pipeline.bench.generation import generation_rows
from pipeline.bench.spec import WorkerSpec
from pipeline.core.artifact import Format
from pipeline.core.errors import described
from pipeline.model.cache import INPUTS, CacheLayout
from pipeline.model.inputs import Inputs, load_sentences, random_tokens, tokenize
from pipeline.runtime.threads import set_torch_threads
from pipeline.runtime.timing import Protocol, latencies, throughput, warm_up


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


TORCH_FREE = (Format.ONNX.value, Format.OPENVINO.value)  # formats whose worker runs without torch


def target_backend(spec: WorkerSpec) -> Any:
    """The target's backend: the artifact's file (pipeline.runtime.backends.file_backend), or the eager model."""
    from pipeline.model.loading import ModelHandle
    from pipeline.model.spec import ModelSpec
    from pipeline.runtime.backends import TorchBackend, file_backend

    device, threads = spec["device"], spec["threads"]
    fmt = Format(spec["format"])
    if fmt is not Format.EAGER:
        if not spec["path"]:
            raise ValueError(f"target {spec['target']}: a {fmt.value} target needs its file")
        return file_backend(fmt, Path(spec["path"]), (spec["input_names"], spec["output_names"]), device, threads)
    handle = ModelHandle(ModelSpec(**spec["model"]), spec["task"], spec["input_names"], spec["output_names"],
                         Path(spec["base_dir"]))
    return TorchBackend(handle.load().module, spec["input_names"], device)


def grid_inputs(spec: WorkerSpec, batch: int, seq: int) -> Inputs:
    """The inputs of one grid point: random tokens (a decoder's: a prefill of ``seq`` tokens with an empty
    cache, or one decode step after a cache of ``seq`` positions) or the factory's examples."""
    if spec.get("examples"):
        from pipeline.model.inputs import resize_examples

        examples = {k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in spec["examples"].items()}
        return resize_examples(examples, batch)
    if spec.get("cache") and spec.get("decoder_points") == "decode":  # one new token per row after seq positions
        token = random_tokens(["input_ids"], batch, 1, spec["vocab_size"], seed=batch * 1000 + seq, pad_fraction=0)
        return {**token, "attention_mask": np.ones((batch, seq + 1), dtype=np.int64),
                **CacheLayout(**spec["cache"]).empty(batch, seq, seed=batch * 1000 + seq)}
    if spec.get("cache"):  # a prefill: the prompt with an empty cache
        tokens = random_tokens(list(INPUTS), batch, seq, spec["vocab_size"], seed=batch * 1000 + seq, pad_fraction=0)
        return {**tokens, **CacheLayout(**spec["cache"]).empty(batch)}
    return random_tokens(spec["input_names"], batch, seq, spec["vocab_size"], seed=batch * 1000 + seq, pad_fraction=0)


def best_batch(backend: Any, spec: WorkerSpec, protocol: Protocol) -> dict[str, Any]:
    """Double the batch from 1 until throughput stops rising (plateau), memory runs out, or the cap."""
    cfg = spec["best_batch"]
    seq, limit = cfg["seq"], cfg["memory_limit_mb"]
    quick = Protocol(warmup=1, warmup_seconds=0.1, throughput_seconds=protocol.throughput_seconds)
    curve, best, stalls, batch, stop = [], None, 0, 1, "max_batch"
    while batch <= cfg["max_batch"]:
        try:
            call = backend.stage(grid_inputs(spec, batch, seq))
            warm_up(call, backend.timer, quick)
            calls, seconds = throughput(call, backend.sync, quick)
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


def real_data(backend: Any, spec: WorkerSpec, protocol: Protocol) -> dict[str, Any]:
    """Sentences per second through tokenize and run: fixed padding against batching by length."""
    from pipeline.model.loading import tokenizer_at

    cfg = spec["real_data"]
    tokenizer = tokenizer_at(spec["tokenizer_dir"], spec.get("tokenizer_gguf"))
    sentences = load_sentences(Path(cfg["corpus"]))
    names, batch, max_len = spec["input_names"], cfg["batch"], cfg["max_length"]

    def padded(texts: list[str]) -> None:
        for i in range(0, len(texts), batch):
            backend.run_host(tokenize(tokenizer, texts[i:i + batch], names, seq=max_len))

    def by_length(texts: list[str]) -> None:
        # Tokenize once, sort by length, pad each batch to its longest: no second tokenizer pass.
        encoded = tokenizer(texts, truncation=True, max_length=max_len)
        order = sorted(range(len(texts)), key=lambda j: len(encoded["input_ids"][j]))
        for i in range(0, len(order), batch):
            backend.run_host(pad_batch(encoded, order[i:i + batch], names, tokenizer.pad_token_id or 0))

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


class Target:
    """The worker's target: its backend, and the current point's staged inputs, warmed up once per point."""

    def __init__(self, spec: WorkerSpec, backend: Any) -> None:
        self.spec, self.backend = spec, backend
        self.protocol = Protocol(**spec["protocol"])
        self._point: tuple[int, int] | None = None
        self._call: Callable[[], Any] | None = None

    def block(self, batch: int, seq: int, protocol: Protocol) -> dict[str, Any]:
        """Timed calls at one point: the round's warm-up and latencies, and back-to-back throughput
        when the round asks for it; a new point is first staged and warmed up with the full protocol."""
        backend = self.backend
        if self._point != (batch, seq) or self._call is None:
            self._call = None  # free the previous point's inputs before staging the next
            self._call = backend.stage(grid_inputs(self.spec, batch, seq))
            self._point = (batch, seq)
            warm_up(self._call, backend.timer, self.protocol)
        warm_up(self._call, backend.timer, protocol)
        out: dict[str, Any] = {"latencies_ms": latencies(self._call, backend.timer, protocol)}
        if protocol.throughput_seconds > 0:
            out["throughput_calls"], out["throughput_seconds"] = throughput(self._call, backend.sync, protocol)
        out.update(peak_rss_mb=peak_rss_mb(), peak_gpu_mb=gpu_peak_mb(self.spec["device"]))
        return out

    def extras(self) -> dict[str, Any]:
        """What is measured per target, not against the others: best batch, memory, generation, real data."""
        spec, backend, protocol = self.spec, self.backend, self.protocol
        self._call = self._point = None
        out: dict[str, Any] = {}
        if spec.get("best_batch"):
            out["best_batch"] = best_batch(backend, spec, protocol)
        # Peak memory of the model alone: the real-data run below loads a tokenizer (and with it torch).
        out["peak_rss_mb"] = peak_rss_mb()
        out["peak_gpu_mb"] = gpu_peak_mb(spec["device"])
        if spec.get("generation"):
            out["generation"] = generation_rows(backend.host_outputs, spec, protocol)
        if spec.get("real_data") and spec.get("tokenizer_dir"):
            out["real_data"] = real_data(backend, spec, protocol)
            out["real_data"]["peak_rss_mb"] = peak_rss_mb()
        return out


def serve(spec: WorkerSpec, requests: IO[str], replies: IO[str],
          target_backend: Callable[[WorkerSpec], Any] = target_backend,
          extras: Callable[[Any, WorkerSpec], dict[str, Any]] | None = None) -> int:
    """Load the target, say so, then answer requests (one JSON line each) until 'quit' or end of input.

    ``block`` measures one point; ``extras`` measures the per-target extras (plus ``extras(backend,
    spec)``, a caller's own). A request that fails is answered with its error, and the worker goes on.
    """
    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    sys.path[:0] = [p for p in spec.get("sys_path", []) if p not in sys.path]
    threads = spec["threads"]
    if spec["format"] not in TORCH_FREE:  # such a target never imports torch, so its memory is its own
        set_torch_threads(threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        target = Target(spec, target_backend(spec))
    except Exception as exc:  # the orchestrator reports the target as failed, with this reason
        reply({"error": described(exc)})
        return 1
    reply({"ready": True, "pid": os.getpid(), "load_seconds": time.perf_counter() - start,
           "load_cpu_seconds": time.process_time() - cpu_start, "fingerprint": fingerprint(threads, spec["device"])})
    for line in requests:
        request = json.loads(line)
        try:
            if request["op"] == "quit":
                break
            if request["op"] == "block":
                reply(target.block(request["batch"], request["seq"], Protocol(**request["protocol"])))
            elif request["op"] == "extras":
                reply({**target.extras(), **(extras(target.backend, spec) if extras else {})})
            else:
                reply({"error": f"unknown request {request['op']!r}"})
        except Exception as exc:  # one failed request is the target's error, not the worker's end
            reply({"error": described(exc)})
    return 0


def main(argv: list[str], open_target: Callable[[WorkerSpec], Any] = target_backend,
         extras: Callable[[Any, WorkerSpec], dict[str, Any]] | None = None) -> int:
    """Read the spec, then serve requests on stdin with replies on the original stdout; anything a
    library prints goes to stderr, so it can never corrupt a reply."""
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(spec, sys.stdin, replies, open_target, extras)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
