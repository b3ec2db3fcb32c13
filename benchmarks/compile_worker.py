"""The eager model under ``torch.compile`` in its own process, with the project's benchmark protocol.

    python -m benchmarks.compile_worker SPEC.json OUT.json      (from the repository root)

The spec is the one ``pipeline.bench.worker_spec`` writes for the eager target, plus optional
``compile`` (keyword arguments of ``torch.compile``; default: inductor), ``parity_inputs`` (an
.npz of ``<case>/<input>`` arrays) and ``parity_outputs`` (where the compiled model's outputs on
them are saved, as ``<case>/<output>``). Timing runs through ``pipeline.bench_worker.run`` itself,
with its engine opener replaced by one that compiles the module, so the grid, warm-up, statistics,
best-batch search and memory readings are exactly the project's. Compilation happens on the first
call, which is timed on its own (``compile_seconds``) and never counted as a latency.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import bench_worker

STATE: dict[str, Any] = {}


def open_compiled(spec: dict[str, Any]) -> Any:
    """A TorchEngine over ``torch.compile(eager module)``, compiled by one call at the first grid point."""
    import torch

    from pipeline.engines import TorchEngine
    from pipeline.model import ModelHandle, ModelSpec

    handle = ModelHandle(ModelSpec(**spec["model"]), spec["task"], spec["input_names"], spec["output_names"],
                         Path(spec["base_dir"]))
    module = handle.load().module.eval()
    compiled = torch.compile(module, **spec.get("compile", {}))
    engine = TorchEngine(compiled, spec["input_names"], spec["device"])
    batch, seq = spec["grid"][0]
    start = time.perf_counter()
    engine.run_host(bench_worker._grid_inputs(spec, batch, seq))
    STATE.update(engine=engine, compile_seconds=time.perf_counter() - start, compile_shape=[batch, seq])
    return engine


def graph_count() -> int | None:
    """Graphs dynamo compiled so far in this process (a recompile for a new shape adds one)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: absent in some torch versions
        return None


def run_parity(engine: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the compiled model on every parity case; save its outputs; time it (recompiles included)."""
    import torch

    names, outputs = spec["input_names"], spec["output_names"]
    saved: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    with np.load(spec["parity_inputs"], allow_pickle=False) as data:
        cases = sorted({key.split("/", 1)[0] for key in data.files})
        for case in cases:
            args = [torch.from_numpy(np.ascontiguousarray(data[f"{case}/{name}"])) for name in names]
            with torch.inference_mode():
                result = engine.module(*args)
            if torch.is_tensor(result):
                result = (result,)
            for name, value in zip(outputs, result, strict=False):
                saved[f"{case}/{name}"] = value.detach().float().cpu().numpy()
    np.savez(spec["parity_outputs"], **saved)
    return {"cases": len(cases), "seconds": time.perf_counter() - start}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Benchmark the compiled model with the project's protocol, then run the parity cases."""
    if not hasattr(bench_worker, "_open_engine"):
        raise RuntimeError("pipeline.bench_worker has no _open_engine to replace; update benchmarks/compile_worker.py")
    bench_worker._open_engine = open_compiled  # this process only: the worker's protocol, a compiled engine
    result = bench_worker.run(spec)
    result.update(compile_seconds=STATE["compile_seconds"], compile_shape=STATE["compile_shape"],
                  compile_options=spec.get("compile", {}), graphs_after_bench=graph_count())
    if spec.get("parity_inputs"):
        result["parity_run"] = run_parity(STATE["engine"], spec)
        result["graphs_after_parity"] = graph_count()
    return result


if __name__ == "__main__":
    sys.exit(bench_worker.main(sys.argv[1:], run))
