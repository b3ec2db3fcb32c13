"""`python -m pipeline ...`: optimize, verify, bench, ship, matrix, list, schema.

Exit codes: 0 done and an artifact shipped; 1 the parity gate failed and nothing was shipped;
2 bad input (one line on stderr, no traceback); 3 a pass failed (its name in the message).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from pipeline.core.errors import BadInputError, PipelineError, Terminated

if TYPE_CHECKING:
    from pipeline.report.outcome import RunResult

log = logging.getLogger("pipeline")


def _setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty() and not os.environ.get("CI"):
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    # onnxruntime's quantizer advises pre-processing on every call through the root logger; the
    # passes decide about pre-processing themselves and say so in their stats.
    handler.addFilter(lambda record: not str(record.msg).startswith("Please consider to run pre-processing"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(level)
    logging.getLogger("passes").setLevel(level)
    if not verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# what a path or disk the user chose can do to a run: exit 2, as bad input
USER_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EISDIR,
               errno.ENOTDIR, errno.ELOOP, errno.ENOENT, errno.ENXIO, errno.EEXIST, errno.ENOTEMPTY, errno.EINVAL)
FORCE_HELP = "write into an existing folder this tool did not make (it replaces only the entries it writes)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and library warnings")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("optimize", "run a recipe's chain, verify every artifact, ship the best"),
                       ("verify", "re-run verification of an already built recipe"),
                       ("bench", "re-measure latency and throughput of an already built recipe")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("recipe", type=Path, help="recipe YAML file")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe value, e.g. --set passes[1].onnx_export.opset=18")
        cmd.add_argument("--out", type=Path, default=None, help="output folder (default artifacts/<recipe>)")
        cmd.add_argument("--force", action="store_true", help=FORCE_HELP)
        cmd.add_argument("--limit", type=int, default=None, metavar="N",
                         help="task accuracy on the first N labeled examples only")
        if name != "verify":
            cmd.add_argument("--full-grid", action="store_true",
                             help="benchmark every batch with every sequence length, and each target's best batch "
                                  "and real-data runs (bench.grid=full)")
        if name == "optimize":
            cmd.add_argument("--no-bench", action="store_true",
                             help="measure nothing (a whole cached benchmark is still used)")
            cmd.add_argument("--dry-run", action="store_true", help="print the plan and which steps are cached")
    ship = sub.add_parser("ship", help="bundle the shipped artifact of a built recipe, or check a bundle")
    ship.add_argument("recipe", type=Path, nargs="?", help="recipe YAML file")
    ship.add_argument("--check", type=Path, metavar="DIR", help="verify a bundle against its manifest")
    ship.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ship.add_argument("--out", type=Path, default=None)
    ship.add_argument("--force", action="store_true", help=FORCE_HELP)
    matrix = sub.add_parser("matrix", help="run a matrix of recipes, models and overrides as Ray tasks")
    matrix.add_argument("matrix", type=Path, help="matrix YAML file")
    matrix.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="Ray cluster to run on, its head's GCS address (default: a local instance)")
    matrix.add_argument("--out", type=Path, default=None, help="matrix folder (default artifacts/matrix/<name>)")
    matrix.add_argument("--force", action="store_true", help=FORCE_HELP)
    matrix.add_argument("--num-cpus", type=int, default=None, metavar="N",
                        help="CPUs of the local instance (default: this machine's)")
    sub.add_parser("list", help="list recipes and passes")
    sub.add_parser("schema", help="print the recipe JSON Schema")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = [*args.overrides, *(["bench.grid=full"] if getattr(args, "full_grid", False) else [])]
    if args.limit is None:
        return overrides
    if args.limit < 1:
        raise BadInputError(f"--limit: must be at least 1, got {args.limit}")
    return [*overrides, f"verify.accuracy.limit={args.limit}"]


def _finish(result: RunResult, show_bench: bool = True) -> int:
    from pipeline.report import console

    console.print_summary(result)
    if result.bench and show_bench:
        console.print_bench(result)
    if result.shipped is None:
        console.print_gate_failure(result)
        return 1
    if result.bundle is None:  # verify leaves the bundle as it is
        log.info("%s passes and ships; its bundle is not in %s (run ship); report: %s", result.shipped,
                 result.out_dir / "ship", result.out_dir / "report.md")
    else:
        log.info("shipped %s to %s; report: %s", result.shipped, result.bundle, result.out_dir / "report.md")
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    if not args.dry_run:
        replayed = _replay(args)
        if replayed is not None:
            return replayed
    from pipeline.report import console
    from pipeline.run.optimize import run
    from pipeline.run.prepare import prepare
    from pipeline.run.replay import remember

    prepared = prepare(args.recipe, _overrides(args), args.out, args.force)
    if args.dry_run:
        console.print_plan(prepared.recipe.name, prepared.out_dir, prepared.planned)
        return 0
    console.recorded(clear=True)  # the record holds this run's output alone
    if prepared.ctx.model.spec.weights == "random":
        log.warning("model weights are RANDOM (seed %d): parity is real, quality numbers are not",
                    prepared.ctx.model.spec.seed)
    code = _finish(run(prepared, build=True, bench="reuse" if args.no_bench else "cached"))
    remember(prepared.out_dir, prepared.recipe, prepared.ctx.base_dir, _flags(args), code, console.recorded())
    return code


def _flags(args: argparse.Namespace) -> dict[str, object]:
    """What of the command line, besides the recipe and its overrides, shapes an optimize run."""
    return {"command": args.command, "no_bench": args.no_bench, "force": args.force}


def _replay(args: argparse.Namespace) -> int | None:
    """When nothing the run reads changed since the last run into the same folder, print what that
    run printed and return its exit code (torch is never imported); else None."""
    from pipeline.core.output_folder import check_output_folder, output_folder
    from pipeline.recipe.load import load_recipe
    from pipeline.run.replay import recorded, run_digest

    recipe = load_recipe(args.recipe, _overrides(args))
    out_dir = output_folder(args.out, recipe.name)
    check_output_folder(out_dir, args.out, args.force)  # a folder a run would refuse is refused here too
    record = recorded(out_dir, run_digest(recipe, out_dir, Path.cwd(), _flags(args)))
    if record is None:
        return None
    sys.stdout.write(record["console"])
    log.info("nothing changed since the last run into %s (recipe, model, files, code, machine, artifacts): "
             "nothing rebuilt, verified or measured; exit %d as then", out_dir, record["exit_code"])
    return int(record["exit_code"])


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.run.optimize import run
    from pipeline.run.prepare import prepare

    # verification alone: the benchmark kept is not printed again, and the bundle stays as it is
    return _finish(run(prepare(args.recipe, _overrides(args), args.out, args.force), build=False, bench="reuse",
                       ship=False), show_bench=False)


def _cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.run.optimize import run
    from pipeline.run.prepare import prepare

    return _finish(run(prepare(args.recipe, _overrides(args), args.out, args.force), build=False, bench="force"))


def _cmd_ship(args: argparse.Namespace) -> int:
    if args.check is not None:
        from pipeline.ship.bundle import check_bundle

        if not args.check.exists():  # no bundle to check: bad input, not a finding about a bundle
            raise BadInputError(f"ship --check: {args.check} does not exist")
        if not args.check.is_dir():
            raise BadInputError(f"ship --check: {args.check} is not a folder")
        problems = check_bundle(args.check)
        for line in problems:
            print(f"{args.check}: {line}", file=sys.stderr)
        if not problems:
            print(f"{args.check}: bundle intact")
        return 1 if problems else 0
    if args.recipe is None:
        raise BadInputError("ship: give a recipe, or --check DIR")
    from pipeline.run.optimize import run
    from pipeline.run.prepare import prepare

    return _finish(run(prepare(args.recipe, args.overrides, args.out, args.force), build=False, bench="reuse"))


def _cmd_matrix(args: argparse.Namespace) -> int:
    if args.num_cpus is not None and args.num_cpus < 1:
        raise BadInputError(f"--num-cpus: must be at least 1, got {args.num_cpus}")
    from pipeline.matrix.run import run_matrix

    return run_matrix(args.matrix, args.address, args.out, args.num_cpus, force=args.force)


def _cmd_list(_: argparse.Namespace) -> int:
    from pipeline.engine.registry import all_passes
    from pipeline.recipe.load import matrix_files, recipe_files

    found = [("recipe", path) for path in recipe_files(Path("recipes"))]
    found += [("matrix", path) for path in matrix_files(Path("recipes"))]
    passes = all_passes()
    width = max([len(path.stem) for _, path in found] + [len(name) for name in passes])
    for kind, path in found:
        print(f"{kind}  {path.stem:<{width}}  {_description(path)}".rstrip())
    for name, cls in passes.items():
        consumes = "/".join(sorted(f.value for f in cls.consumes))
        print(f"pass    {name:<{width}}  {consumes} -> {cls.produces.value}")
    return 0


def _description(path: Path) -> str:
    """The ``description`` line of a recipe or matrix file, read from its YAML alone (no model, no torch);
    a file that does not read says so in its place."""
    from pipeline.recipe.load import load_raw

    try:
        description = load_raw(path).get("description")
    except (PipelineError, OSError) as exc:
        return f"(cannot read it: {exc})"
    return " ".join(description.split()) if isinstance(description, str) else ""


def _cmd_schema(_: argparse.Namespace) -> int:
    from pipeline.engine.chain import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


COMMANDS = {"optimize": _cmd_optimize, "verify": _cmd_verify, "bench": _cmd_bench, "ship": _cmd_ship,
            "matrix": _cmd_matrix, "list": _cmd_list, "schema": _cmd_schema}


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def _default_sigterm() -> None:
    """In a child forked by a library (OpenVINO's telemetry sends from one), SIGTERM kills as usual: a
    Python handler never runs in a child stuck in C code after the fork, so its parent could not stop it,
    and it would outlive the run holding the run's output pipes."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. SIGTERM unwinds like Ctrl-C: temporaries removed, exit 143."""
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _dispatch(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _dispatch(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; every failure becomes one line on stderr and its exit code."""
    try:
        return COMMANDS[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk or a path, not the model: read-only, not ours to write, full, odd
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; finished steps are kept", file=sys.stderr)
        return 2 if exc.errno in USER_ERRNOS else 3
    except Terminated:
        print("terminated: stopped cleanly; finished steps are kept and reused by the next run", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted: stopped cleanly; finished steps are kept and reused by the next run", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: one line, the traceback with -v
        if args.verbose:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 3
