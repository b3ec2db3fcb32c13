"""A catalogue of hostile folders: what a run reads back from its output folder (records, caches,
manifests, journals, links in place of its folders) may have been tampered with. Each case either
rebuilds with a warning or exits 2 naming the problem; never exit 3, never a replayed verdict, never a
write through a link the tool did not make, never a deletion of what it did not make."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.core.seal import read_record, sealed, write_record
from pipeline.core.store import SWAP_PREFIX, TMP_PREFIX
from pipeline.core.versions import library_versions

BENCH = {"batches": [1], "seqs": [8], "rounds": 2, "ship_point_rounds": 2, "min_seconds": 0.05, "min_repeats": 3,
         "warmup_seconds": 0.01, "best_batch": None, "real_data": None, "ship_point_generations": 1,
         # other tests' load is no reason to measure a point again
         "max_others_cpu": 1, "max_steal": 1, "max_baseline_spread": 1000}
OUT = Path("o")


def _recipe(config: Path) -> dict:
    return {"name": "tiny", "model": {"source": str(config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
            "task": "feature-extraction", "passes": ["onnx_export"],
            "verify": {"shapes": [[1, 9]], "sentence_batches": 1}, "ship": {"fastest_at": [1, 8]}, "bench": BENCH}


@pytest.fixture(scope="session")
def benched_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> Path:
    """A working folder with a recipe and its finished, benchmarked run in ``o``."""
    work = tmp_path_factory.mktemp("benched")
    (work / "tiny.yaml").write_text(yaml.safe_dump(_recipe(tiny_bert_config)))
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert main(["optimize", "tiny.yaml", "--out", str(OUT)]) == 0
    finally:
        os.chdir(cwd)
    return work


@pytest.fixture
def work(benched_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the benchmarked run, made the working folder."""
    copy = tmp_path / "work"
    shutil.copytree(benched_run, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


def _optimize(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["optimize", "tiny.yaml", "--out", str(OUT), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _user_folder(work: Path) -> Path:
    folder = work / "mine"
    folder.mkdir()
    for name in ("manifest.json", "parity_error.png", "ratios.json", "x"):
        (folder / name).write_text("the user's\n")
    return folder


# -- 2. no writes through links --------------------------------------------------------------
@pytest.mark.parametrize("name", ["reference", "plots", "bench"])
def test_a_link_in_place_of_a_folder_the_run_writes_is_replaced_not_written_through(
        work: Path, name: str, capsys: pytest.CaptureFixture, tree_snapshot: Callable[[Path], dict[str, str]]) -> None:
    mine = _user_folder(work)
    before = tree_snapshot(mine)
    shutil.rmtree(OUT / name)
    (OUT / name).symlink_to(mine)
    code, _, err = _optimize(capsys)
    assert code == 0 and f"{name}: a link where this tool keeps its {name}/ folder" in err
    assert tree_snapshot(mine) == before
    assert (OUT / name).is_dir() and not (OUT / name).is_symlink() and any((OUT / name).iterdir())


def test_a_link_in_place_of_the_bundle_is_replaced_and_nothing_is_left_behind(
        work: Path, capsys: pytest.CaptureFixture, tree_snapshot: Callable[[Path], dict[str, str]]) -> None:
    mine = _user_folder(work)
    before = tree_snapshot(mine)
    shutil.rmtree(OUT / "ship")
    (OUT / "ship").symlink_to(mine)
    (OUT / f"{TMP_PREFIX}ship-1-abcd.old").symlink_to(mine)  # left by an older version's replacement
    code, _, _ = _optimize(capsys, "--no-bench")
    assert code == 0 and tree_snapshot(mine) == before
    assert (OUT / "ship").is_dir() and not (OUT / "ship").is_symlink()
    assert not [p for p in OUT.iterdir() if p.name.startswith((TMP_PREFIX, SWAP_PREFIX))]


@pytest.mark.parametrize("name", ["ship", "01_onnx_export", ".lock"])
def test_a_dangling_link_in_place_of_an_entry_of_the_run_is_replaced(
        work: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    target = work / "nowhere"
    path = OUT / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(target)
    code, _, err = _optimize(capsys, "--no-bench")
    assert code == 0, _errors(err)
    assert not os.path.lexists(target) and not path.is_symlink()


# -- 4. a crafted swap journal ------------------------------------------------------------------
def test_a_crafted_swap_journal_deletes_no_folder_the_tool_did_not_mark(
        work: Path, capsys: pytest.CaptureFixture) -> None:
    folder = OUT / f"{TMP_PREFIX}userdir"
    folder.mkdir()
    (folder / "f").write_text("precious\n")
    (OUT / f"{SWAP_PREFIX}notes.txt.json").write_text(json.dumps(
        {"tool": "model-pipeline", "final": "notes.txt", "old": folder.name}))
    (OUT / f"{SWAP_PREFIX}ship.json").write_text(json.dumps(
        {"tool": "model-pipeline", "final": "ship", "old": folder.name}))
    code, _, _ = _optimize(capsys, "--no-bench")
    assert code == 0 and (folder / "f").read_text() == "precious\n" and not (OUT / "notes.txt").exists()


# -- 5. no verdict from a tampered record ----------------------------------------------------------
def test_an_edited_run_record_is_not_replayed(work: Path, capsys: pytest.CaptureFixture) -> None:
    failing = ["--no-bench", "--set", "verify.tolerance.fp32.max_abs=1e-30"]
    assert _optimize(capsys, *failing)[0] == 1
    _edit_json(OUT / ".last-run.json", lambda record: record.update(exit_code=0, console="\x1b[2JALL GOOD: shipped\n"))
    code, out, err = _optimize(capsys, *failing)
    assert code == 1 and "ALL GOOD" not in out and "nothing changed since the last run" not in err
    assert "not a run record this tool sealed" in err


def test_an_edited_ratio_is_measured_again_not_shipped_on(work: Path, capsys: pytest.CaptureFixture) -> None:
    def inflate(record: dict) -> None:
        for entry in record["ratios"]:
            entry.update(ratio=1000.0, ci95=[999.0, 1001.0])
    session = json.loads((OUT / "bench" / "ratios.json").read_text())["session"]
    _edit_json(OUT / "bench" / "ratios.json", inflate)
    code, out, err = _optimize(capsys, "--set", "description=edited ratios")
    assert code == 0 and "1000.00x" not in out and "not a benchmark record this tool sealed" in err
    saved = read_record(OUT / "bench" / "ratios.json")  # measured again, in a session of its own
    assert saved is not None and saved["session"] != session and all(e["ratio"] != 1000.0 for e in saved["ratios"])


def test_a_reference_edited_with_its_hash_is_computed_again(work: Path, capsys: pytest.CaptureFixture) -> None:
    reference = OUT / "reference" / "reference.npz"
    with np.load(reference) as data:
        arrays = {name: data[name] * (1 if "inputs" in name else 0) for name in data.files}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    reference.write_bytes(buffer.getvalue())
    _edit_json(OUT / "reference" / "manifest.json",
               lambda m: m.update(sha256=hashlib.sha256(buffer.getvalue()).hexdigest()))
    code, _, err = _optimize(capsys, "--no-bench")
    assert code == 0 and "not a reference manifest this tool sealed" in err
    with np.load(reference) as data:
        assert any(np.abs(data[name]).max() > 0 for name in data.files if "outputs" in name)


def test_a_seal_is_bound_to_the_content_and_the_key(tmp_path: Path) -> None:
    record = sealed({"ratio": 2.5, "rows": [1, 2]})
    assert record["seal"] and read_record_from(tmp_path, record) == {"ratio": 2.5, "rows": [1, 2]}
    assert read_record_from(tmp_path, {**record, "ratio": 1000.0}) is None
    assert read_record_from(tmp_path, {"ratio": 2.5, "rows": [1, 2]}) is None
    assert read_record_from(tmp_path, {**record, "seal": "0" * 64}) is None


def read_record_from(folder: Path, value: dict) -> dict | None:
    path = folder / "record.json"
    path.write_text(json.dumps(value))
    return read_record(path)


# -- 6. what the replay digests --------------------------------------------------------------------
def test_the_replay_digests_the_python_path(work: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _optimize(capsys)  # a copy is a new folder to the replay: record a run in it
    assert "nothing changed since the last run" in _optimize(capsys)[2]
    monkeypatch.setenv("PYTHONPATH", str(work / "shadow"))
    assert "nothing changed since the last run" not in _optimize(capsys)[2]


def test_openvino_and_nncf_are_in_the_versions_every_cache_key_holds() -> None:
    versions = library_versions()
    for name in ("openvino", "nncf"):
        try:
            __import__(name)
        except ImportError:
            continue
        assert name in versions


def test_a_replay_refuses_an_out_that_climbs_out(work: Path, capsys: pytest.CaptureFixture) -> None:
    os.chdir(work / "o")
    capsys.readouterr()
    code = main(["optimize", "../tiny.yaml", "--out", "../o"])
    err = capsys.readouterr().err
    assert code == 2 and "'..'" in _errors(err)[0] and "nothing changed" not in err


def test_content_changed_with_size_and_time_restored_is_not_replayed(
        work: Path, capsys: pytest.CaptureFixture) -> None:
    _optimize(capsys)
    assert "nothing changed since the last run" in _optimize(capsys)[2]
    report = OUT / "report.md"
    info = report.stat()
    text = report.read_bytes()
    report.write_bytes(text.replace(b"|", b"!", 1))
    os.utime(report, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert report.stat().st_size == info.st_size and report.stat().st_mtime_ns == info.st_mtime_ns
    assert "nothing changed since the last run" not in _optimize(capsys)[2]


# -- 7. FIFOs where records are read ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", [".last-run.json", "report.json", "bench/ratios.json",
                                  "01_onnx_export/manifest.json"])
def test_a_fifo_in_place_of_a_record_blocks_nothing(work: Path, name: str) -> None:
    (OUT / name).unlink()
    os.mkfifo(OUT / name)
    done = subprocess.run([sys.executable, "-m", "pipeline", "optimize", "tiny.yaml", "--out", str(OUT), "--no-bench"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]


# -- 8. malformed records --------------------------------------------------------------------------
def _value(name: str, value: object) -> Callable[[Path], None]:
    return lambda _work: (OUT / name).write_text(json.dumps(value))


def _resealed(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    """The record changed and sealed again with the tool's own key: a record malformed by the tool itself."""
    def tamper(_work: Path) -> None:
        record = read_record(OUT / name)
        assert record is not None
        change(record)
        write_record(OUT / name, record)
    return tamper


def _object_array(_work: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"sentences_b1/inputs/input_ids": np.array([{"a": 1}], dtype=object)})
    (OUT / "reference" / "reference.npz").write_bytes(buffer.getvalue())
    _resealed("reference/manifest.json", lambda m: m.update(sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
                                                            cases=["sentences_b1"], kinds=["forward"]))(_work)


MALFORMED = [
    ("record-is-1", _value(".last-run.json", 1)),
    ("record-is-a-string", _value(".last-run.json", "x")),
    ("record-is-a-list", _value(".last-run.json", [0])),
    ("record-console-is-5", _resealed(".last-run.json", lambda r: r.update(console=5))),
    ("record-exit-code-true", _resealed(".last-run.json", lambda r: r.update(exit_code=True))),
    ("ratios-without-batch", _value("bench/ratios.json", {"session": "s", "ratios": [{"ratio": 2.0}]})),
    ("eager-rows-garbage", _value("bench/eager.json", {"rows": "garbage", "key": "k"})),
    ("manifest-format-bogus", _resealed("01_onnx_export/manifest.json", lambda m: m.update(format="bogus"))),
    ("manifest-without-file", _resealed("01_onnx_export/manifest.json", lambda m: m.pop("file"))),
    ("manifest-stats-5", _resealed("01_onnx_export/manifest.json", lambda m: m.update(stats=5))),
    ("manifest-file-outside", _resealed("01_onnx_export/manifest.json", lambda m: m.update(file="../tiny.yaml"))),
    ("reference-object-array", _object_array),
    ("reference-kinds-5", _resealed("reference/manifest.json", lambda m: m.update(kinds=5))),
]


@pytest.mark.parametrize("tamper", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_a_malformed_record_is_treated_as_absent(work: Path, tamper: Callable[[Path], None],
                                                  capsys: pytest.CaptureFixture) -> None:
    tamper(work)
    code, _, err = _optimize(capsys)
    assert code == 0 and "internal error" not in err and "nothing changed since the last run" not in err, err


@pytest.mark.parametrize("model_file", [{}, [1], None, 5])
def test_ship_check_names_a_model_file_that_is_not_a_name(work: Path, model_file: object,
                                                          capsys: pytest.CaptureFixture) -> None:
    _edit_json(OUT / "ship" / "manifest.json", lambda m: m.update(model_file=model_file))
    code = main(["ship", "--check", str(OUT / "ship")])
    err = capsys.readouterr().err
    assert code == 1 and "its model_file" in err and "internal error" not in err


# -- 9. exit 2, not 3 -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".lock", ".model-pipeline"])
def test_a_folder_where_the_run_keeps_a_file_is_refused(work: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    (OUT / name).unlink()
    (OUT / name).mkdir()
    code, _, err = _optimize(capsys, "--no-bench")
    assert code == 2 and len(_errors(err)) == 1 and name in _errors(err)[0]


@pytest.mark.parametrize(("out", "expected"), [("x" * 300, "longer than the 255"),
                                               ("/proc/self/newdir", "/proc/self"),
                                               ("/dev/null", "/dev/null")])
def test_an_output_path_the_system_cannot_hold_is_exit_2(work: Path, out: str, expected: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    code = main(["optimize", "tiny.yaml", "--out", out, "--no-bench"])
    err = _errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and expected in err[0] and "internal error" not in err[0], err


def test_proc_self_with_force_is_exit_2(work: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    code = main(["optimize", "tiny.yaml", "--out", "/proc/self", "--force", "--no-bench"])
    err = _errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "/proc/self" in err[0], err


def test_a_full_disk_at_the_marker_names_the_folder_and_its_free_space(
        tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from pipeline.core import output_folder

    def full(path: Path, _value: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_folder, "write_json_atomic", full)
    capsys.readouterr()
    code = main(["optimize", "tiny.yaml", "--out", "fresh", "--no-bench"])
    err = _errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "fresh" in err[0] and "free" in err[0], err
    assert not (work / "fresh").exists()


def test_a_deep_list_in_a_recipe_or_set_is_exit_2(work: Path, capsys: pytest.CaptureFixture) -> None:
    deep = "[" * 300 + "]" * 300
    recipe = yaml.safe_load((work / "tiny.yaml").read_text())
    (work / "deep.yaml").write_text(yaml.safe_dump(recipe) + f"extra: {deep}\n")
    for args in (["deep.yaml"], ["tiny.yaml", "--set", f"passes[0]={deep}"]):
        capsys.readouterr()
        code = main(["optimize", *args, "--out", str(OUT), "--no-bench"])
        err = _errors(capsys.readouterr().err)
        assert code == 2 and len(err) == 1 and "nested more than" in err[0], err


# -- the property: every file a run reads back -------------------------------------------------------
def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage \x80" * 3)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _wrong_type(path: Path) -> None:
    path.write_text(json.dumps([1, "two", None]) if path.suffix == ".json" or path.name.startswith(".") else "[1]")


def _linked(path: Path) -> None:
    copy = path.parent.parent / f"outside-{path.name}"
    shutil.copyfile(path, copy) if not copy.exists() else None
    path.unlink()
    path.symlink_to(copy.resolve())


MUTATIONS = {"corrupt": _corrupt, "truncated": _truncate, "wrong-type": _wrong_type, "linked": _linked}
READ_BACK = [".last-run.json", ".model-pipeline", ".passed.json", ".shipped.json", "01_onnx_export/manifest.json",
             "01_onnx_export/model.onnx", "reference/manifest.json", "reference/reference.npz", "bench/eager.json",
             "bench/onnx_export.json", "bench/ratios.json"]


@pytest.mark.slow
@pytest.mark.parametrize("name", READ_BACK)
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_every_file_read_back_rebuilds_or_refuses_never_crashes_or_replays(
        work: Path, name: str, mutation: str, capsys: pytest.CaptureFixture) -> None:
    MUTATIONS[mutation](OUT / name)
    code, _, err = _optimize(capsys)
    assert "nothing changed since the last run" not in err and "internal error" not in err, err
    if code == 2:
        assert len(_errors(err)) == 1 and Path(name).name in _errors(err)[0], err
    else:
        assert code == 0, err
        assert (name if "/" not in name else Path(name).parent.as_posix()) in err, err
    assert not any(line.startswith("Traceback") for line in err.splitlines())


def test_the_catalogue_covers_every_record_a_run_reads_back(benched_run: Path) -> None:
    out = benched_run / OUT
    written = {p.relative_to(out).as_posix() for p in out.rglob("*")
               if p.is_file() and p.suffix in (".json", ".npz", ".onnx") and not p.is_relative_to(out / "ship")}
    written |= {".model-pipeline", ".last-run.json"}
    assert written - {"report.json"} == set(READ_BACK)  # the report is written for people and tools, never read
