"""Side by side with the tools users would pick instead (`make peers RECIPE=minilm`).

A text-generation recipe (`make peers RECIPE=smollm2`) goes to benchmarks/decoder_peers.py, with its own
options (``--batches 1,4 --rounds 8 ...``); what follows is an encoder recipe's run.

    python benchmarks/peers.py recipes/minilm.yaml [--batches 1,8] [--seqs 128] [--max-batch 32] ...

In one run, for the recipe's model: this project's artifacts (the recipe is run first; cached
artifacts are reused), eager PyTorch, ``torch.compile``, Optimum's export, O1/O2/O3 and dynamic
int8 (in ``.venv-optimum``), optimum-intel's OpenVINO export and NNCF int8 (in ``.venv-intel``),
Olive's conversion, transformer optimization and dynamic int8 (in ``.venv-olive``), onnxruntime's
own ``optimize_model`` and ``quantize_dynamic`` with their defaults, and NNCF's int8 with its
defaults on the recipe's OpenVINO IR. Every target is checked against eager with the project's
parity metrics and benchmarked in its own process by the project's worker, all of them in one
session of interleaved rounds (ratios within a round, with 95% intervals), with the recipe's
protocol and threads.
Writes ``benchmarks/results/<recipe>-<date>.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root holds the benchmarks package

from benchmarks import decoder_peers  # noqa: E402
from benchmarks.peer_build import add_stats  # noqa: E402
from benchmarks.peer_measure import Settings  # noqa: E402
from benchmarks.peer_plot import plot  # noqa: E402
from benchmarks.peer_report import write  # noqa: E402
from benchmarks.peer_run import (  # noqa: E402
    drift_lines,
    mark_shipped,
    measure,
    peer_targets,
    project_targets,
)
from benchmarks.peer_table import Point  # noqa: E402
from pipeline.bench.fingerprint import fingerprint  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.core.versions import library_versions  # noqa: E402
from pipeline.recipe.load import load_recipe  # noqa: E402
from pipeline.report.outcome import RunResult  # noqa: E402
from pipeline.run.optimize import run  # noqa: E402
from pipeline.run.prepare import prepare  # noqa: E402

log = logging.getLogger("benchmarks.peers")
PARTS = ("eager", "compile", "project", "optimum", "intel", "olive", "ort", "nncf")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the defaults keep a run near 10 to 15 minutes on 2 cores."""
    parser = argparse.ArgumentParser(description="Benchmark a recipe's artifacts against Optimum, onnxruntime's "
                                                 "own tools, eager PyTorch and torch.compile.")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--batches", type=_ints, default=(1, 8), help="grid batch sizes (default 1,8)")
    parser.add_argument("--seqs", type=_ints, default=(128,), help="grid sequence lengths (default 128)")
    parser.add_argument("--best-seq", type=int, default=128, help="sequence length of the best-batch search")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch of the search (0: no search)")
    parser.add_argument("--point", type=_ints, default=None,
                        help="batch,seq of the quoted p50 (default: the recipe's ship.fastest_at, else 1,128)")
    parser.add_argument("--real-data", action="store_true", help="also run the corpus through tokenize and run")
    parser.add_argument("--isa", default="auto", choices=("auto", "avx2", "avx512", "avx512_vnni"),
                        help="Optimum AutoQuantizationConfig preset (auto: from /proc/cpuinfo)")
    parser.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(),
                        help=f"parts to leave out, comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--quiet-threshold", type=float, default=0.10,
                        help="share of the cores other processes may use before a target waits (default 0.10)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds a target waits at most for other processes to leave the cores")
    parser.add_argument("--quick", action="store_true", help="tiny protocol, for development (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    parser.add_argument("--work", type=Path, default=None, help="where peer models go (default artifacts/peers/RECIPE)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per target (default: the recipe's)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    unknown = args.skip - set(PARTS)
    if unknown:
        parser.error(f"--skip {','.join(sorted(unknown))}: known parts are {', '.join(PARTS)}")
    return args


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Log and time one phase of the run."""
    log.info("== %s", name)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start
        log.info("== %s done in %.0f s", name, timings[name])


def settings_meta(settings: Settings, point: Point, result: RunResult, timeout: float) -> dict[str, Any]:
    """What the report says about the grid and protocol."""
    bench = result.recipe.bench
    protocol = {k: getattr(bench, k) for k in ("warmup", "warmup_seconds", "min_repeats", "min_seconds",
                                                "max_seconds", "throughput_seconds", "cv_threshold", "rounds",
                                                "pause_seconds", "max_steal", "max_others_cpu")}
    return {"grid": f"batches {list(settings.batches)} x sequences {list(settings.seqs)}; ship point b{point[0]} "
                    f"s{point[1]}",
            "best-batch search": (f"sequence {settings.best_seq}, batch doubling from 1 to {settings.max_batch}"
                                  if settings.max_batch else "off"),
            "real-data run": "on" if settings.real_data else "off",
            "protocol": "QUICK (development; numbers meaningless)" if settings.quick else f"the recipe's: {protocol}",
            "threads": f"{bench.threads} intra-op, 1 inter-op (torch and onnxruntime)",
            "timeout per target": f"{timeout:.0f} s"}


def git_state() -> str:
    """The commit this ran on, and whether the working tree had changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}" + (" with uncommitted changes" if dirty else "")


def make_settings(args: argparse.Namespace, result: RunResult) -> tuple[Settings, Point]:
    """The grid (the ship point always in it) and the ship point."""
    recipe = result.recipe
    fastest = tuple(recipe.ship.fastest_at) if recipe.ship.fastest_at else None
    point: Point = tuple(args.point) if args.point else fastest or (1, 128)  # type: ignore[assignment]
    settings = Settings(tuple(sorted({*args.batches, point[0]})), tuple(sorted({*args.seqs, point[1]})),
                        args.best_seq, args.max_batch, args.real_data, args.quick, args.quiet_threshold,
                        args.quiet_wait, point)
    return settings, point


def setup_logging(verbose: bool) -> None:
    """Progress lines from this script and the pipeline; libraries only warn."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("benchmarks", "pipeline", "passes"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def generates_text(argv: list[str]) -> bool:
    """Whether the recipe (the first argument that is no option) is a text-generation one; a recipe that
    does not load is left to the encoder run, which says why."""
    recipe = next((a for a in argv if not a.startswith("-")), None)
    try:
        return recipe is not None and load_recipe(Path(recipe)).task == "text-generation"
    except PipelineError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the recipe, build the peers, check and benchmark everything, write the report."""
    argv = sys.argv[1:] if argv is None else argv
    if generates_text(argv):
        setup_logging("-v" in argv or "--verbose" in argv)
        return decoder_peers.main([a for a in argv if a not in ("-v", "--verbose")])
    args = parse_args(argv)
    setup_logging(args.verbose)
    recipe_path, out_dir = args.recipe.resolve(), args.out.resolve()
    os.chdir(ROOT)  # the pipeline resolves recipe-relative files against the working directory
    timings: dict[str, float] = {}
    with phase("recipe (cached artifacts reused, cached benchmarks only)", timings):
        # bench="reuse": nothing is measured here, and a bundle shipped from cached benchmarks stays as it is.
        prepared = prepare(recipe_path)
        result = run(prepared, bench="reuse")
    recipe = result.recipe
    settings, point = make_settings(args, result)
    timeout = args.timeout or recipe.bench.timeout_seconds
    targets = project_targets(result, args.skip)
    with phase("build peers", timings):
        work = (args.work or Path("artifacts") / "peers" / recipe.name).resolve()
        peers, env_versions, isa = peer_targets(prepared, result, work, args.isa, args.skip, timeout)
        targets += peers
        add_stats(targets)
    with phase("parity and benchmarks (interleaved rounds)", timings):
        ratios = measure(prepared, targets, settings, timeout)
    eager = next((t for t in targets if t.name == "eager" and t.bench), None)
    drift = drift_lines(eager)
    shipped, notes = mark_shipped(result, targets, ratios)
    if isa:
        notes.append(f"Optimum's quantization preset: AutoQuantizationConfig.{isa}, chosen from the CPU flags in "
                     "/proc/cpuinfo (--isa to force one).")
    date = datetime.date.today().isoformat()
    md_path = out_dir / f"{recipe.name}-{date}.md"
    fp = (eager.bench or {}).get("fingerprint") if eager else None
    meta = {"recipe": recipe.name, "date": date, "point": list(point), "task": recipe.task,
            "model": recipe.model.source or recipe.model.factory, "shipped": shipped,
            "ship_rule": recipe.ship.model_dump(), "recipe_run_shipped": result.shipped,
            "fingerprint": fp or fingerprint(recipe.bench.threads, recipe.device),
            "versions": library_versions(), **env_versions, "git": git_state(),
            "notes": notes, "drift": drift, "ratios": ratios, "rounds": recipe.bench.rounds,
            "ship_point_rounds": recipe.bench.ship_point_rounds,
            "settings": settings_meta(settings, point, result, timeout),
            "timings": timings, "plot": f"{md_path.stem}.png", "busy_threshold": settings.quiet_threshold,
            "command": shlex.join(["python", "benchmarks/peers.py", *argv])}
    plot(targets, point, f"{recipe.name} against its peers ({date}; {meta['fingerprint']['cpu']}, "
                         f"{recipe.bench.threads} threads)", md_path.with_suffix(".png"))
    md, js = write(targets, meta, md_path)
    log.info("wrote %s, %s and %s", md, js, md_path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
