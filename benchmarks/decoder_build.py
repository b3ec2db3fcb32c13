"""Build a decoder recipe's peers: the model as a plain fp32 Hugging Face folder (the peers' common
source), onnxruntime-genai's model builder on it at each precision, optimum-intel's exports (in
``.venv-intel``), and this project's shipped artifact when the recipe has run. Each build is reused
while the model it came from is the same."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.decoder_arrays import save_inputs
from benchmarks.peer_build import INTEL_PYTHON, ROOT, EnvPeers, env_peers, reason
from benchmarks.peer_table import Target
from pipeline.model.loading import ModelHandle
from pipeline.verify.cases import Case, CaseKind

log = logging.getLogger("benchmarks.peers")
STAMP = "built.json"
INTEL_SCRIPT = Path(__file__).with_name("intel_decoder.py")
GENAI_HOW = "onnxruntime_genai.models.builder -p {precision} -e cpu, its CPU defaults"


def read_stamp(folder: Path) -> dict[str, Any] | None:
    """The stamp a finished build left in ``folder`` (None when there is none)."""
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_stamp(folder: Path, stamp: dict[str, Any]) -> None:
    """Mark ``folder`` as built from ``stamp`` (written last: a build cut short leaves none)."""
    (folder / STAMP).write_text(json.dumps(stamp, indent=1), encoding="utf-8")


def fresh(folder: Path, stamp: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished build of ``stamp``; a stale or unfinished one is removed."""
    if read_stamp(folder) == stamp:
        return True
    if folder.exists():
        shutil.rmtree(folder)
    return False


def hf_folder(handle: ModelHandle, folder: Path) -> Path:
    """The recipe's model saved as fp32 safetensors with its tokenizer and generation config.

    transformers refuses to save a model it dequantized from GGUF, so the weights move into a plain
    model of the same config (no quantization config) first; the tied embeddings stay tied.
    """
    stamp = {"source": handle.source_key}
    if fresh(folder, stamp):
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    loaded: Any = handle.load().module.model
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    with contextlib.redirect_stderr(io.StringIO()):  # a progress bar per saved shard
        plain.save_pretrained(str(folder))
    handle.tokenizer.save_pretrained(str(folder))
    write_stamp(folder, stamp)
    log.info("saved %s as a plain fp32 folder in %.0f s", handle.spec.source, time.perf_counter() - start)
    return folder


def genai_version() -> str | None:
    """onnxruntime-genai's version in this environment (None when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return None


def genai_peer(hf_dir: Path, out: Path, precision: str, source: str, timeout: float) -> Target:
    """onnxruntime-genai's model builder at ``precision`` for the CPU, with its defaults."""
    target = Target(f"genai-{precision}", "onnxruntime-genai", "genai", precision=precision,
                    how=GENAI_HOW.format(precision=precision), path=str(out))
    version = genai_version()
    if version is None:
        target.error = "onnxruntime-genai is not installed (build it with `make genai-env`)"
        return target
    stamp = {"source": source, "precision": precision, "onnxruntime-genai": version}
    if fresh(out, stamp):
        target.stats = read_stamp(out) or {}
        return target
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    start = time.perf_counter()
    try:
        with open(out / "build.log", "w", encoding="utf-8") as logfile:
            proc = subprocess.run(command, stdout=logfile, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        target.error = f"the model builder timed out after {timeout:.0f} s"
        return target
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        lines = [line for line in (out / "build.log").read_text(errors="replace").splitlines() if line.strip()]
        target.error = f"model builder: {lines[-1][:300] if lines else f'exit {proc.returncode}'}"
        return target
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("model.onnx"))
    write_stamp(out, {**stamp, "seconds": seconds, "bytes": size})
    target.stats = {"seconds": seconds, "bytes": size}
    log.info("onnxruntime-genai %s built in %.0f s", precision, seconds)
    return target


def gate_cases(cases: list[Case]) -> list[Case]:
    """The reference's cases the token gate reads: the prompts and the held-out windows."""
    return [case for case in cases if case.kind in (CaseKind.GENERATE, CaseKind.PERPLEXITY)]


def intel_peers(hf_dir: Path, out: Path, cases: list[Case], source: str, pad_id: int, new_tokens: int,
                threads: int, timeout: float, python: Path = INTEL_PYTHON
                ) -> tuple[list[Target], dict[str, Any]]:
    """optimum-intel's exports built and run on the cases by benchmarks/intel_decoder.py in .venv-intel:
    (targets, that script's report: versions, and per peer its outputs .npz)."""
    if not fresh(out, {"source": source}):  # the script reuses what it built (and failed to build) here
        out.mkdir(parents=True)
        write_stamp(out, {"source": source})
    inputs = out / "cases.npz"
    save_inputs(inputs, [(c.name, c.kind.value, c.inputs) for c in cases])
    command = [str(INTEL_SCRIPT), str(out), str(hf_dir), "--inputs", str(inputs), "--pad-id", str(pad_id),
               "--new-tokens", str(new_tokens), "--threads", str(threads)]
    env = EnvPeers("optimum-intel", "optimum-intel", python, "intel-env", "intel_decoder.json")
    targets, report = env_peers(env, command, out, timeout)
    for target in targets:
        target.precision = "int4" if "int4" in target.name else "int8" if "int8" in target.name else target.precision
        target.kind = "openvino"
        peer = report.get("peers", {}).get(target.name, {})
        target.error = target.error or peer.get("error")
        if peer.get("path"):
            target.path = str(Path(peer["path"]).parent)
    return targets, report


def shipped_target(out_dir: Path) -> Target | None:
    """The artifact the recipe's last run shipped, from its report.json (None when it shipped none)."""
    report_path = out_dir / "report.json"
    if not (out_dir / "ship").is_dir() or not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        row = next(r for r in report["artifacts"] if r["name"] == report["shipped_step"])
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        log.warning("%s: no shipped artifact found (%s)", report_path, reason(exc))
        return None
    return Target(f"shipped ({row['name']})", "this project", "project", precision=row["precision"],
                  how=f"the recipe's shipped step {row['name']} ({row['format']}), from {report_path}",
                  path=str(out_dir / row["path"]), stats={"format": row["format"]})
