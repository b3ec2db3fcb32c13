"""The deployment bundle: the shipped artifact with what it takes to serve it, and proof that it is whole.

``<out>/ship/`` holds the model file(s) at its root, ``config.json`` and the tokenizer files (so
transformers, Optimum's ORTModel classes and, for an OpenVINO IR, optimum-intel's OVModel classes load the
folder as it is); for a decoder, ``generation_config.json`` and a tokenizer set up for ``generate``, so
ORTModelForCausalLM or OVModelForCausalLM generates from it (pipeline.ship.generation); for a
sentence-transformers model, its head's files too, so SentenceTransformer loads it
with the onnx or openvino backend (pipeline.ship.sentence); ``manifest.json`` (the sha256 of every file, the
lineage from the source model, library versions, the parity verdict, any benchmark rows, and ``requires``:
what it takes to run, pipeline.ship.requires); and ``README.md``, saying how to load it and what it needs.
With ``ship.triton: true``, an ONNX bundle also holds a Triton Inference Server model repository under
``triton/`` (a second copy of the model, so it is opt-in). Every model file is shipped once by default.
Every path in it is relative, so the folder can be moved or copied anywhere.

The bundle is built in a staging folder and swapped in with one rename: a bundle shipped before
stays whole if anything fails midway.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Protocol

from pipeline.bench.spec import CONTRACT_ROW_KEYS, BenchResult, Ratio
from pipeline.core.artifact import Artifact, Format, read_manifest, verify_folder
from pipeline.core.disk import check_not_cut_short, disk_full, is_disk_full, require_space
from pipeline.core.errors import ArtifactError, ParityError, PipelineError
from pipeline.core.store import MANIFEST, json_safe, read_json, sha256_file, staging_folder, write_json_atomic
from pipeline.core.versions import library_versions
from pipeline.engine.chain import Step
from pipeline.model.loading import ModelHandle, _auto_class
from pipeline.model.sentence import SentenceHead
from pipeline.recipe.load import Recipe
from pipeline.runtime.sessions import OPENVINO_CONFIG
from pipeline.ship.generation import (
    finish_tokenizer,
    generation_summary,
    is_decoder,
    legacy_config,
    write_generation_config,
)
from pipeline.ship.readme import bundle_readme
from pipeline.ship.requires import requirements
from pipeline.ship.sentence import sentence_summary, serving_head, write_sentence_files, write_tokenizer
from pipeline.ship.triton import DEFAULT_MAX_BATCH, write_repository
from pipeline.verify.parity import Parity

log = logging.getLogger(__name__)

SHIP_DIR = "ship"
TRITON_DIR = "triton"
CONFIG_FILE = "config.json"
README = "README.md"
# an IR's compile options as a file of their own: SentenceTransformer takes its path as ov_config (not
# openvino_config.json, which optimum-intel reads as its own quantization config)
OV_COMPILE_CONFIG = "ov_compile_config.json"
BUNDLE_VERSION = 1
SHIPPABLE = (Format.ONNX, Format.TORCHSCRIPT, Format.TORCH_EXPORT, Format.OPENVINO)
# An OpenVINO IR ships under the names optimum-intel's OVModel classes load (openvino.Core().read_model
# finds the weights beside the .xml under the same stem, so both names change together).
BUNDLE_NAMES = {Format.OPENVINO: {"model.xml": "openvino_model.xml", "model.bin": "openvino_model.bin"}}
BENCH_KEYS = ("best_batch", "real_data", "peak_rss_mb", "peak_gpu_mb", "fingerprint", "error")
REGULAR_ONLY = "(a bundle holds regular files only)"


class ShippedRun(Protocol):
    """What a bundle is built from: the run's recipe, chain, model and folder, its artifacts, the step that
    ships, and the verdicts and measurements the manifest carries (pipeline.report.outcome.RunResult is one)."""

    @property
    def recipe(self) -> Recipe: ...
    @property
    def steps(self) -> list[Step]: ...
    @property
    def model(self) -> ModelHandle: ...
    @property
    def out_dir(self) -> Path: ...
    @property
    def artifacts(self) -> dict[str, Artifact]: ...
    @property
    def shipped(self) -> str | None: ...
    @property
    def parity(self) -> dict[str, Parity]: ...
    @property
    def bench(self) -> dict[str, BenchResult]: ...
    @property
    def ratios(self) -> list[Ratio]: ...
    @property
    def unmeasured(self) -> list[Ratio]: ...


def build_bundle(result: ShippedRun, max_batch_size: int = DEFAULT_MAX_BATCH) -> Path:
    """Write the bundle of ``result.shipped`` to ``<out_dir>/ship``, atomically; returns that folder."""
    name = result.shipped
    if name is None:
        raise ParityError("nothing to ship: no artifact the recipe may ship passed its parity gate")
    artifact = result.artifacts[name]
    if artifact.path is None or artifact.format not in SHIPPABLE:
        raise ArtifactError(f"step {name}: a {artifact.format.value} artifact cannot be shipped")
    final = result.out_dir / SHIP_DIR
    require_space(result.out_dir, int(artifact.stats.get("bytes", 0)), "ship")
    try:
        return _write_bundle(result, artifact, final, max_batch_size)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, PipelineError):
            raise disk_full(exc, result.out_dir, writing=final) from None
        raise


def _write_bundle(result: ShippedRun, artifact: Artifact, final: Path, max_batch_size: int) -> Path:
    """Build the bundle in a staging folder and swap it in as ``final``."""
    assert artifact.path is not None and result.shipped is not None
    handle = result.model
    with staging_folder(final) as tmp:
        copied = copy_artifact(artifact, tmp, BUNDLE_NAMES.get(artifact.format, {}))
        write_config(handle, tmp)
        head = serving_head(handle, artifact)
        write_tokenizer(handle, tmp, head.max_seq_length if head else None)
        finish_tokenizer(tmp, is_decoder(handle))
        if is_decoder(handle):
            write_generation_config(handle, tmp)
        if head is not None:
            write_sentence_files(head, tmp)
        triton = None
        if artifact.format is Format.ONNX and result.recipe.ship.triton:
            triton = write_repository(tmp / bundled_name(artifact), tmp / TRITON_DIR, result.recipe.name,
                                      result.recipe.device, max_batch_size)
        serving = serving_facts(result, artifact, tmp, triton.relative_to(tmp) if triton else None, head)
        if artifact.format is Format.OPENVINO:
            write_json_atomic(tmp / OV_COMPILE_CONFIG, serving["openvino_config"])
        write_readme(tmp, {**bundle_manifest(result, result.shipped, {}, serving), "files": None})
        files = bundle_files(tmp)
        changed = sorted(rel for rel, digest in copied.items() if files.get(rel) != digest)
        if changed:
            raise ArtifactError(f"ship: {', '.join(changed)} in the bundle no longer match the step's artifact")
        manifest = bundle_manifest(result, result.shipped, files, serving)
        write_json_atomic(tmp / MANIFEST, manifest)
        make_readable(tmp)
        check_not_cut_short(tmp, final)
    log.info("shipped %s to %s (%d files)", artifact.path.parent.name, final, len(files))
    return final


def check_bundle(path: Path) -> list[str]:
    """Every way the bundle at ``path`` differs from its manifest, one line each; empty when intact.

    A bundle holds regular files only: a symbolic link (to a file, to a folder, or dangling) or any
    other entry that is not a regular file or folder is a finding of its own; links are not followed.
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: not a folder"]
    files, irregular = _walk_bundle(path)
    problems = [f"{rel}: {what} {REGULAR_ONLY}" for rel, what in irregular.items()]
    manifest = read_json(path / MANIFEST) if MANIFEST in files else None  # a bundle travels: checked, not sealed
    if not isinstance(manifest, dict):
        return problems if MANIFEST in irregular else [*problems, f"{MANIFEST}: missing or not valid JSON"]
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        return [*problems, f"{MANIFEST}: no files table"]
    actual = {rel: sha256_file(file) for rel, file in files.items() if rel != MANIFEST}
    problems += _against_manifest(listed, actual, irregular)
    if not isinstance(manifest.get("model_file"), str) or manifest["model_file"] not in listed:
        problems.append(f"{MANIFEST}: its model_file {manifest.get('model_file')!r} is not among its files")
    return problems


def _against_manifest(listed: dict[str, Any], actual: dict[str, str], irregular: dict[str, str]) -> list[str]:
    """The listed files that are missing or changed, then the files the manifest does not list.

    A listed file at or under an irregular entry is left out: that entry has its own line."""
    problems = []
    for rel, digest in sorted(listed.items()):
        if any(rel == odd or rel.startswith(f"{odd}/") for odd in irregular):
            continue
        if rel not in actual:
            problems.append(f"{rel}: missing")
        elif actual[rel] != digest:
            problems.append(f"{rel}: changed (sha256 {actual[rel][:12]}..., the manifest says {str(digest)[:12]}...)")
    return problems + [f"{rel}: not listed in {MANIFEST}" for rel in sorted(set(actual) - set(listed))]


def bundle_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but the top-level manifest, by relative POSIX path.

    Raises ArtifactError when the folder holds a symbolic link or anything else but regular files
    and folders, so no link is ever shipped.
    """
    files, irregular = _walk_bundle(folder)
    if irregular:
        found = "; ".join(f"{rel}: {what}" for rel, what in irregular.items())
        raise ArtifactError(f"ship: {folder} holds {found} {REGULAR_ONLY}")
    return {rel: sha256_file(path) for rel, path in files.items() if rel != MANIFEST}


def _walk_bundle(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The regular files under ``folder`` and what every other entry is, both by relative POSIX path.

    Nothing is followed: a link is reported as a link (a linked folder is not descended), and so is
    any entry that is neither a regular file nor a folder (a fifo, a socket, a device).
    """
    files: dict[str, Path] = {}
    irregular: dict[str, str] = {}
    for top, dirs, names in os.walk(folder, followlinks=False):
        for name in [*dirs, *names]:
            path = Path(top) / name
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                irregular[rel] = "a symbolic link"
            elif stat.S_ISREG(mode):
                files[rel] = path
            elif not stat.S_ISDIR(mode):
                irregular[rel] = "not a regular file"
    return dict(sorted(files.items())), dict(sorted(irregular.items()))


def make_readable(folder: Path) -> None:
    """Folders 755, files 644: the staging folder and atomic writes are owner-only, a server reads as another user."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


# -- contents ---------------------------------------------------------------------------------
def bundled_name(artifact: Artifact) -> str:
    """The name of the artifact's main file in the bundle."""
    assert artifact.path is not None
    return BUNDLE_NAMES.get(artifact.format, {}).get(artifact.path.name, artifact.path.name)


def copy_artifact(artifact: Artifact, dest: Path, names: dict[str, str] | None = None) -> dict[str, str]:
    """Copy the files of the artifact's step folder (checked against its manifest first), renamed as
    ``names`` says; their sha256 by their name in ``dest``."""
    assert artifact.path is not None
    folder = artifact.path.parent
    manifest = read_manifest(folder)
    if manifest is None:
        raise ArtifactError(f"{folder}: no readable {MANIFEST}; run the recipe again")
    verify_folder(folder, manifest)
    names = names or {}
    copied: dict[str, str] = {}
    for rel, digest in manifest["files"].items():
        target = dest / names.get(rel, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, target)
        copied[names.get(rel, rel)] = digest
    return copied


def exported_config(handle: ModelHandle) -> dict[str, Any] | None:
    """The model's transformers config as config.json holds it, naming the class that was exported.

    ``architectures`` becomes the task's model class (what was traced), and a classifier always
    carries its labels, so older transformers (Optimum's 4.57) read the same labels.
    """
    config = handle.hf_config
    if config is None:
        return None
    data: dict[str, Any] = config.to_diff_dict()
    try:
        data["architectures"] = [_auto_class(handle.task)._model_mapping[type(config)].__name__]
    except (KeyError, AttributeError, ValueError):
        log.debug("no %s class for %s; config.json keeps its architectures", handle.task, type(config).__name__)
    if handle.task == "text-classification":
        data["id2label"] = {str(k): v for k, v in config.id2label.items()}
        data["label2id"] = {str(k): int(v) for k, v in config.label2id.items()}
    return legacy_config(data) if is_decoder(handle) else data


def write_config(handle: ModelHandle, dest: Path) -> None:
    """config.json for a Hugging Face model (a factory model has none)."""
    data = exported_config(handle)
    if data is not None:
        write_json_atomic(dest / CONFIG_FILE, json_safe(data))


def write_readme(dest: Path, info: dict[str, Any]) -> None:
    """README.md: how to load the bundle and what it needs (pipeline.ship.readme), from the manifest's facts."""
    (dest / README).write_text(bundle_readme(info), encoding="utf-8")


def serving_facts(result: ShippedRun, artifact: Artifact, folder: Path, triton: Path | None,
                  head: SentenceHead | None) -> dict[str, Any]:
    """What the manifest and README say about serving the bundle in ``folder``: ``requires``, ``sentence`` (the
    head laid out for SentenceTransformer, or None), ``generation`` (how a decoder's bundle loads for generate, or
    None), the Triton repository, the IR's compile options and the file they are in."""
    assert artifact.path is not None
    ov_config = openvino_config(artifact) if artifact.format is Format.OPENVINO else None
    device = result.recipe.device
    return {
        "requires": requirements(artifact.format, folder / bundled_name(artifact), device, ov_config,
                                 result.model.task),
        "sentence": sentence_summary(result.model, head, artifact),
        "generation": generation_summary(result.model, artifact, device),
        "triton": {"model": result.recipe.name, "path": triton.as_posix(), "copy_of": bundled_name(artifact)}
        if triton else None,
        # the compile options the IR was verified and benchmarked with: pass them to compile_model (or as
        # ov_config to optimum-intel's from_pretrained), or the CPU plugin may pick another precision
        "openvino_config": ov_config,
        "openvino_config_file": OV_COMPILE_CONFIG if ov_config is not None else None,
    }


# -- manifest ---------------------------------------------------------------------------------
def bundle_manifest(result: ShippedRun, name: str, files: dict[str, str], serving: dict[str, Any]) -> dict[str, Any]:
    """manifest.json of the bundle: what it holds, where it came from, how it was checked, and what it takes to
    serve it (``serving``: serving_facts)."""
    recipe, handle = result.recipe, result.model
    artifact = result.artifacts[name]
    assert artifact.path is not None
    step = next(s for s in result.steps if s.name == name)
    return json_safe({
        "bundle": BUNDLE_VERSION, "recipe": recipe.name, "step": step.folder, "name": name,
        "format": artifact.format.value, "precision": artifact.precision, "model_file": bundled_name(artifact),
        "files": files, "lineage": lineage(result, name), "versions": library_versions(),
        "parity": parity_summary(result.parity.get(name)), "bench": bench_summary(result, name),
        "task": recipe.task, "device": recipe.device, "inputs": list(handle.input_names),
        "outputs": list(handle.output_names), "random_weights": handle.spec.weights == "random",
        "gguf_weights": handle.gguf_weights,
        **serving, "readme": README, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def openvino_config(artifact: Artifact) -> dict[str, Any]:
    """The compile options an IR was verified with: the runtime options its pass wrote into the IR (a dynamic
    quantization group size), stated here too, and OPENVINO_CONFIG, which wins where both name an option (an
    explicit compile config overrides the IR's, as it did in verification)."""
    options = artifact.meta.get("runtime_options")
    carried = {str(key): str(value) for key, value in options.items()} if isinstance(options, dict) else {}
    return {**carried, **OPENVINO_CONFIG}


def lineage(result: ShippedRun, name: str) -> list[dict[str, Any]]:
    """The path from the source model to step ``name``: the source, then each step in order."""
    steps = {s.name: s for s in result.steps}
    chain = []
    current = name
    while current != "eager":
        step = steps[current]
        artifact = result.artifacts[current]
        chain.append({"step": step.folder, "name": step.name, "pass": step.pass_cls.name,
                      "config": step.config.cache_config(), "sha256": artifact.sha256, "key": artifact.key})
        current = step.source
    return [{"source": result.model.describe()}, *reversed(chain)]


def parity_summary(parity: Parity | None) -> dict[str, Any] | None:
    """The parity verdict without the per-case table: passed, exempt, worst metrics, tolerance."""
    if parity is None:
        return None
    summary = parity.to_json()
    summary.pop("cases", None)
    summary["exempt"] = parity.exempt
    return summary


def bench_summary(result: ShippedRun, name: str) -> dict[str, Any] | None:
    """The step's benchmark, when the run measured it: DESIGN.md's rows, its interleaved ratios over
    eager, best batch, real data, machine."""
    measured: dict[str, Any] | None = result.bench.get(name)  # type: ignore[assignment]
    if not isinstance(measured, dict):  # not measured (or a record that is not one)
        return None
    summary = {key: measured[key] for key in BENCH_KEYS if measured.get(key) is not None}
    summary["rows"] = [{key: row[key] for key in (*CONTRACT_ROW_KEYS, "unstable", "measured") if key in row}
                       for row in measured.get("rows", [])]
    summary["ratios"] = [entry for entry in result.ratios if entry.get("target") == name]
    summary["not_measured"] = [entry for entry in result.unmeasured if entry.get("target") == name]
    if isinstance(summary.get("best_batch"), dict):
        summary["best_batch"] = {k: v for k, v in summary["best_batch"].items() if k != "curve"}
    return summary

