"""The eager model under ``torch.compile`` in its own process, with the project's benchmark protocol.

    python -m benchmarks.compile_worker SPEC.json      (from the repository root)

The spec is the one ``pipeline.bench.orchestrate.worker_spec`` writes for the eager target, plus optional
``compile`` (keyword arguments of ``torch.compile``; default: inductor), ``parity_inputs`` (an
.npz of ``<case>/<input>`` arrays) and ``parity_outputs`` (where the compiled model's outputs on
them are saved, as ``<case>/<output>``). It serves the interleaved rounds through
``pipeline.bench.worker.main`` itself, with a backend opener that compiles the module, so the blocks,
warm-up, best-batch search and memory readings are exactly the project's. Compilation happens on the
first call, which is timed on its own (``compile_seconds``) and never counted as a latency.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench import worker as bench_worker

STATE: dict[str, Any] = {}


def open_compiled(spec: dict[str, Any]) -> Any:
    """A TorchBackend over ``torch.compile(eager module)``, compiled by one call at the first grid point."""
    import torch

    from pipeline.model.loading import ModelHandle
    from pipeline.model.spec import ModelSpec
    from pipeline.runtime.backends import TorchBackend

    handle = ModelHandle(ModelSpec(**spec["model"]), spec["task"], spec["input_names"], spec["output_names"],
                         Path(spec["base_dir"]))
    module = handle.load().module.eval()
    compiled = torch.compile(module, **spec.get("compile", {}))
    backend = TorchBackend(compiled, spec["input_names"], spec["device"])
    batch, seq = spec["grid"][0]
    start = time.perf_counter()
    backend.run_host(bench_worker.grid_inputs(spec, batch, seq))
    STATE.update(compile_seconds=time.perf_counter() - start, compile_shape=[batch, seq])
    return backend


def graph_count() -> int | None:
    """Graphs dynamo compiled so far in this process (a recompile for a new shape adds one)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: absent in some torch versions
        return None


def run_parity(backend: Any, spec: dict[str, Any]) -> dict[str, Any]:
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
                result = backend.module(*args)
            if torch.is_tensor(result):
                result = (result,)
            for name, value in zip(outputs, result, strict=False):
                saved[f"{case}/{name}"] = value.detach().float().cpu().numpy()
    np.savez(spec["parity_outputs"], **saved)
    return {"cases": len(cases), "seconds": time.perf_counter() - start}


def compiled_extras(backend: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Compile time and graph counts, then the parity cases (their recompiles counted apart)."""
    out = {"compile_seconds": STATE["compile_seconds"], "compile_shape": STATE["compile_shape"],
           "compile_options": spec.get("compile", {}), "graphs_after_bench": graph_count()}
    if spec.get("parity_inputs"):
        out["parity_run"] = run_parity(backend, spec)
        out["graphs_after_parity"] = graph_count()
    return out


if __name__ == "__main__":
    sys.exit(bench_worker.main(sys.argv[1:], open_compiled, compiled_extras))
