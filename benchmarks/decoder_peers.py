"""Side by side with the tools users would pick instead, for a decoder recipe (`make peers RECIPE=smollm2`).

    python benchmarks/peers.py recipes/smollm2.yaml [--batches 1,4] [--prompt-tokens 32] [--rounds 8] ...

For the recipe's model, saved once as a plain fp32 Hugging Face folder: onnxruntime-genai's model
builder (int4, int8 and fp32 for the CPU, its defaults), optimum-intel's OVModelForCausalLM with its
default 4-bit weights and with 8-bit weights (in ``.venv-intel``), eager transformers, and this
project's shipped artifact when the recipe has run. Every target meets the recipe's token gate against
the same eager reference (greedy tokens on the corpus prompts, visible tokens only; perplexity on the
held-out text) under the int8 and int4 presets, and generates greedily in its own process, all targets
in the same interleaved rounds (tokens/s, and ratios over eager within each round with 95% intervals).
Writes ``benchmarks/results/<recipe>-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any, cast

from benchmarks.decoder_report import row, write
from benchmarks.decoder_targets import build_targets, eager_cases
from benchmarks.peer_build import INTEL_PYTHON, ROOT
from benchmarks.peer_table import Target
from benchmarks.quiet import contention, wait_for_quiet
from pipeline.bench.fingerprint import cpu_model
from pipeline.bench.orchestrate import measure_session, round_plan
from pipeline.bench.pool import Launch
from pipeline.bench.rounds import RoundPlan
from pipeline.bench.spec import WorkerSpec
from pipeline.core.versions import library_versions
from pipeline.model.cache import cache_layout
from pipeline.run.prepare import Prepared, prepare

log = logging.getLogger("benchmarks.peers")
PARTS = ("genai", "intel", "project")
GENAI_PRECISIONS = ("int4", "int8", "fp32")
WORKER = "benchmarks.decoder_worker"
# one round's block: a warm-up generation, then the timed ones (no cap: a generation is seconds long)
PROTOCOL = {"warmup": 1, "warmup_seconds": 0.0, "min_repeats": 2, "min_seconds": 0.0, "max_seconds": 600.0,
            "throughput_seconds": 0.0, "cv_threshold": 0.10}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; the defaults keep a run near 15 minutes on 2 cores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--batches", type=_ints, default=(1, 4), help="generation batch sizes (default 1,4)")
    parser.add_argument("--prompt-tokens", type=int, default=None,
                        help="prompt length of the speed runs (default: the recipe's first bench.seqs)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens generated per row in the speed runs (default: the recipe's bench.generation, "
                             "else verify.generation)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per batch size")
    parser.add_argument("--repeats", type=int, default=2, help="timed generations per target per round")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of every target (default: the "
                                                                  "recipe's bench.threads)")
    parser.add_argument("--genai-precisions", type=lambda s: tuple(s.split(",")), default=GENAI_PRECISIONS,
                        help="onnxruntime-genai builds (default int4,int8,fp32; fp32 checks the adapter)")
    parser.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(),
                        help=f"parts to leave out, comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--quiet-threshold", type=float, default=0.10,
                        help="share of the cores other processes may use before the benchmark starts")
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="seconds to wait at most for that")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    parser.add_argument("--work", type=Path, default=None, help="peer models (default artifacts/peers/RECIPE)")
    parser.add_argument("--recipe-out", type=Path, default=None,
                        help="the recipe run's folder, with its reference and shipped artifact "
                             "(default artifacts/RECIPE)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per build or block (default: "
                                                                    "the recipe's bench.timeout_seconds)")
    args = parser.parse_args(argv)
    unknown = args.skip - set(PARTS)
    if unknown:
        parser.error(f"--skip {','.join(sorted(unknown))}: known parts are {', '.join(PARTS)}")
    return args


def launch(target: Target, prepared: Prepared, hf_dir: Path, new_tokens: int, threads: int) -> Launch:
    """How to start a target's generation worker (optimum-intel's under .venv-intel's python)."""
    recipe, handle = prepared.recipe, prepared.model
    config: Any = handle.hf_config
    fmt = {"eager": "eager", "genai": "onnx", "openvino": "openvino"}.get(target.kind, target.stats.get("format"))
    spec: dict[str, Any] = {
        "target": target.name, "kind": target.kind, "path": target.path, "format": fmt, "device": "cpu",
        "threads": threads, "protocol": {**PROTOCOL, "warmup": 2}, "new_tokens": new_tokens,
        "tokenizer_dir": str(hf_dir), "corpus": str(prepared.ctx.base_dir / recipe.inputs.corpus_path),
        "input_names": ["input_ids", "attention_mask"], "vocab_size": config.vocab_size,
        "attn": handle.spec.attn_implementation, "cache": dataclasses.asdict(cache_layout(config))}
    if target.kind == "openvino":
        spec.update(python=str(INTEL_PYTHON), module=WORKER)
        return Launch(target.name, cast(WorkerSpec, spec), module="benchmarks.in_env", cwd=ROOT, extras=False)
    return Launch(target.name, cast(WorkerSpec, spec), module=WORKER, cwd=ROOT, extras=False)


def plans(prepared: Prepared, args: argparse.Namespace) -> dict[tuple[int, int], RoundPlan]:
    """Each batch size's rounds: the recipe's noise bounds, blocks of whole generations."""
    block = {**PROTOCOL, "min_repeats": args.repeats}
    base = round_plan(prepared.recipe.bench, "cpu", args.rounds)
    return {(batch, args.prompt_tokens): dataclasses.replace(base, block=block) for batch in args.batches}


def measure(prepared: Prepared, targets: list[Target], hf_dir: Path, args: argparse.Namespace, new_tokens: int,
            timeout: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every target that was built, generating in its own process, in one session of interleaved rounds:
    (ratios over eager, the other processes' share of the cores)."""
    gc.collect()  # close this process's sessions: their threads must not share the cores with a worker
    time.sleep(2)
    runnable = [t for t in targets if t.error is None]
    load = {"others_cpu_share_before": wait_for_quiet(args.quiet_threshold, args.quiet_wait)}
    threads = args.threads or prepared.recipe.bench.threads
    launches = [launch(t, prepared, hf_dir, new_tokens, threads) for t in runnable]
    log.info("bench: %d targets in interleaved rounds, each in its own process", len(launches))
    with contention(load):
        session = measure_session(launches, plans(prepared, args), timeout)
    for t in runnable:
        t.bench = dict(session.results.get(t.name) or {})
        if t.bench.get("error"):
            t.error = f"benchmark: {t.bench['error']}"
            log.warning("bench %s failed: %s", t.name, t.error)
    return [dict(r) for r in [*session.ratios, *session.unmeasured]], load


def notes(args: argparse.Namespace, new_tokens: int, load: dict[str, float]) -> list[str]:
    """What a reader needs to read the table."""
    return [
        f"Speed: greedy generation of {new_tokens} new tokens per row (never fewer: end-of-text does not stop "
        f"it) after a real prompt of {args.prompt_tokens} tokens (corpus sentences joined, no padding), each "
        f"target in its own process, all in {args.rounds} interleaved rounds per batch size (order rotated each "
        f"round; {args.repeats} timed generations per target per round after a warm-up one). tokens/s: batch x "
        "new tokens over a round's median generation time, median over rounds [95% block-bootstrap interval]; "
        "vs eager: eager's time over the target's within each round, median [95% interval].",
        "How each target generates in the speed runs, as its users would: eager and optimum-intel with "
        "`generate` (do_sample False); onnxruntime-genai with its own `Generator` (past and present buffers "
        "shared); this project's artifact with the project benchmark's generation loop.",
        "Token gate: the recipe's eager reference (transformers `generate` on the recipe's corpus prompts in "
        "left-padded batches; the tokens a user sees, up to and including end-of-text; perplexity on the held-out "
        "text) with the project's token_match and perplexity_change. int8 preset: token match >= 0.99 and "
        "perplexity +1% at most; int4: >= 0.90 and +5%. onnxruntime-genai runs the project's greedy loop through "
        "an adapter: its CPU models (GroupQueryAttention) take each row's real positions first and its padding "
        "after, so the adapter moves every left-padded row's tokens, mask and cache to the front and the outputs "
        "back (the onnxruntime-genai fp32 row checks the adapter: it must match eager). optimum-intel "
        "generates with its own `generate` on the same prompt batches (same pad and end-of-text ids); its "
        "perplexity comes from its logits on the same windows.",
        "OpenVINO computes in its CPU plugin's default precision (INFERENCE_PRECISION_HINT, recorded per "
        "target above: bf16 on a CPU with bf16 instructions); the optimum-intel fp32 row shows what that "
        "alone costs.",
        f"Other processes used {load.get('others_cpu_share', 0.0):.0%} of the cores during the benchmark "
        f"({load.get('others_cpu_share_before', 0.0):.0%} just before); a round they disturbed past the "
        "recipe's bounds (bench.max_others_cpu, bench.max_steal) was dropped and run again.",
    ]


def main(argv: list[str]) -> int:
    """Build and judge every target, benchmark them together, write the report."""
    args = parse_args(argv)
    recipe_path, out_dir = args.recipe.resolve(), args.out.resolve()
    recipe_out = args.recipe_out.resolve() if args.recipe_out else None
    os.chdir(ROOT)  # the pipeline resolves recipe-relative files against the working directory
    prepared = prepare(recipe_path, out=recipe_out)
    recipe = prepared.recipe
    args.prompt_tokens = args.prompt_tokens or recipe.bench.seqs[0]
    timeout = args.timeout or recipe.bench.timeout_seconds
    work = (args.work or ROOT / "artifacts" / "peers" / recipe.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    generation = recipe.bench.generation
    new_tokens = args.new_tokens or (generation.new_tokens if generation else recipe.verify.generation.new_tokens)
    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        timings[name] = clock[-1] - clock[-2]

    cases = eager_cases(prepared, work)
    lap("reference")
    targets, hf_dir, versions = build_targets(prepared, args, work, cases, timeout)
    lap("build and gate")
    ratios, load = measure(prepared, targets, hf_dir, args, new_tokens, timeout)
    lap("benchmark")
    lines = [row(t, ratios, args.batches, new_tokens) for t in targets]
    date = datetime.date.today().isoformat()
    meta = {"recipe": recipe.name, "date": date, "model": recipe.model.source, "cpu": cpu_model(),
            "threads": args.threads or recipe.bench.threads, "new_tokens": new_tokens,
            "prompt_tokens": args.prompt_tokens,
            "batches": list(args.batches), "rounds": args.rounds, "repeats": args.repeats,
            "protocol": f"{args.rounds} interleaved rounds per batch size, {new_tokens} new tokens after a "
                        f"{args.prompt_tokens}-token prompt.",
            "versions": library_versions(), **versions, "notes": notes(args, new_tokens, load), "load": load,
            "ratios": ratios, "timings": timings,
            "command": shlex.join(["python", "benchmarks/peers.py", *argv])}
    md, js = write(lines, meta, args.batches, out_dir / f"{recipe.name}-{date}.md")
    log.info("wrote %s and %s", md, js)
    return 0
