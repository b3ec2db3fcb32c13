"""The output folder: a run never deletes what it did not make, follows the user's symlinks, swaps
folders so that a kill at any point leaves the last bundle whole, and decides what is built only once
it holds the folder's lock."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from pipeline.cli import main
from pipeline.core.artifact import read_manifest
from pipeline.core.output_folder import MARKER, claimed
from pipeline.core.seal import write_record
from pipeline.core.store import SWAP_PREFIX, TMP_MARKER, TMP_PREFIX, sha256_file
from pipeline.ship.bundle import check_bundle

CHAIN = ["onnx_export", "onnx_simplify"]
Snapshot = Callable[[Path], dict[str, str]]


@pytest.fixture
def recipe(write_tiny_recipe: Callable[..., Path]) -> Path:
    return write_tiny_recipe("tiny", CHAIN, verify={"shapes": [[1, 9], [3, 77]], "sentence_batches": 1})


def _user_folder(root: Path) -> Path:
    """A home-like folder: a git repository, an ssh key, a shell profile."""
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".git" / "objects" / "ab").write_bytes(os.urandom(64))
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    (root / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (root / "notes.txt").write_text("mine\n")
    return root


def _error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]


def test_a_folder_the_tool_did_not_make_keeps_every_byte(recipe: Path, tmp_path: Path, tree_snapshot: Snapshot,
                                                         capsys: pytest.CaptureFixture) -> None:
    home = _user_folder(tmp_path / "home")
    before = tree_snapshot(home)
    assert main(["optimize", str(recipe), "--no-bench", "--out", str(home)]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and str(home) in err[0] and "was not made by this tool" in err[0] and "--force" in err[0]
    assert tree_snapshot(home) == before

    # --force writes into it, and still deletes nothing it did not make, before or after the run
    assert main(["optimize", str(recipe), "--no-bench", "--out", str(home), "--force"]) == 0
    after = tree_snapshot(home)
    assert {rel: after.get(rel) for rel in before} == before
    assert (home / MARKER).is_file() and (home / "ship" / "manifest.json").is_file()
    assert main(["optimize", str(recipe), "--no-bench", "--out", str(home)]) == 0  # now it is the tool's folder
    assert {rel: tree_snapshot(home).get(rel) for rel in before} == before


def test_out_dot_in_a_clone_is_refused(recipe: Path, tmp_path: Path, tree_snapshot: Snapshot,
                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / ".gitignore").write_text("artifacts/\n")
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text("make test\n")
    before = tree_snapshot(tmp_path)
    assert main(["optimize", str(recipe), "--no-bench", "--out", "."]) == 2
    assert "--out .: the folder exists" in _error_lines(capsys)[0]
    assert tree_snapshot(tmp_path) == before


def test_only_marked_temporaries_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"tool": "model-pipeline"}))
    ours_file = out / f"{TMP_PREFIX}report.json-123"
    ours_file.write_text("{")
    ours_folder = out / f"{TMP_PREFIX}01_onnx_export-abc"
    (ours_folder / "content").mkdir(parents=True)
    (ours_folder / TMP_MARKER).write_text("model-pipeline 1\n")
    unmarked = out / f"{TMP_PREFIX}looks-like-ours"  # a folder with our name but no marker: not provably ours
    unmarked.mkdir()
    (unmarked / "data").write_text("keep")
    empty = out / f"{TMP_PREFIX}01_onnx_export-killed"  # killed between making the folder and marking it
    empty.mkdir()
    linked = out / f"{TMP_PREFIX}link"
    linked.symlink_to(tmp_path)
    kept = [out / ".keep", out / ".tmp-old-style", out / "bench"]
    kept[0].write_text("x")
    kept[1].mkdir()
    kept[2].mkdir()
    (out / "bench" / f"{TMP_PREFIX}eager.json-9").write_text("{")
    with claimed(out, "tiny"):
        pass
    assert not ours_file.exists() and not ours_folder.exists() and not empty.exists()
    assert not (out / "bench" / f"{TMP_PREFIX}eager.json-9").exists()
    assert (unmarked / "data").read_text() == "keep" and all(p.exists() for p in kept)
    assert not os.path.lexists(linked) and tmp_path.is_dir()  # a link of ours goes; what it pointed to stays


def test_a_symlinked_artifacts_folder_is_followed(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                                  ) -> None:
    elsewhere = tmp_path / "other-disk" / "artifacts"
    elsewhere.mkdir(parents=True)
    (tmp_path / "artifacts").symlink_to(elsewhere)
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    assert "None" not in capsys.readouterr().err
    assert (elsewhere / "tiny" / "ship" / "manifest.json").is_file()
    (tmp_path / "out-link").symlink_to(elsewhere)
    assert main(["optimize", str(recipe), "--no-bench", "--out", "out-link/tiny"]) == 0


def test_only_a_relative_out_that_climbs_out_is_refused(recipe: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(recipe), "--no-bench", "--out", "a/../../outside"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "--out a/../../outside" in err[0] and "'..'" in err[0] and "None" not in err[0]
    assert not Path("../outside").exists()


KILLED_IN_SWAP = """
import os, sys
from pathlib import Path
real = os.replace
def replace(src, dst):
    if Path(dst).name == "ship" and Path(src).name == "content":
        os._exit(9)  # killed after the old bundle was moved aside, before the new one is in place
    return real(src, dst)
os.replace = replace
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_kill_between_the_renames_of_a_bundle_swap_leaves_the_old_bundle(recipe: Path, tmp_path: Path,
                                                                            tree_snapshot: Snapshot) -> None:
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    ship = tmp_path / "artifacts" / "tiny" / "ship"
    shipped = tree_snapshot(ship)
    # a looser bound changes the bundle's parity summary, so the bundle is written again (an unchanged one is not)
    looser = ["--set", "verify.tolerance.fp32.max_abs=0.001"]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_SWAP, "optimize", str(recipe), "--no-bench", *looser],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9 and not ship.exists()  # the state the kill left: no bundle in place
    assert list(ship.parent.glob(f"{SWAP_PREFIX}ship.json"))
    # the next run fails its gate, so it ships nothing: the bundle shipped before is back, whole
    assert main(["optimize", str(recipe), "--no-bench", "--set", "verify.tolerance.fp32.max_abs=1e-30"]) == 1
    assert tree_snapshot(ship) == shipped and check_bundle(ship) == []
    assert not [p for p in ship.parent.iterdir() if p.name.startswith((TMP_PREFIX, SWAP_PREFIX))]


def _hold_lock(out: Path) -> int:
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.mark.slow
def test_verify_decides_what_is_built_after_it_holds_the_lock(recipe: Path, tmp_path: Path) -> None:
    assert main(["optimize", str(recipe), "--no-bench", "--out", "built"]) == 0
    out = tmp_path / "being-built"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"tool": "model-pipeline"}))
    fd = _hold_lock(out)  # an optimize run is building this folder
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "verify", str(recipe), "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "waiting for it" in line:
                break
        else:
            pytest.fail(f"verify did not wait for the lock: exit {proc.wait()}")
        shutil.copytree(tmp_path / "built", out, dirs_exist_ok=True)  # ... the build finishes
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


def _scale_weights(path: Path) -> None:
    """Change a model on disk the way a bad copy or an edit would: a valid file with other numbers."""
    model = onnx.load(str(path))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    array = onnx.numpy_helper.to_array(tensor) * 1.5
    tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    onnx.save(model, str(path))


def test_a_cached_step_that_fails_where_it_passed_is_rebuilt_once(recipe: Path, capsys: pytest.CaptureFixture
                                                                  ) -> None:
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    step = Path("artifacts/tiny/02_onnx_simplify")
    _scale_weights(step / "model.onnx")
    manifest = read_manifest(step)
    manifest["files"]["model.onnx"] = manifest["sha256"] = sha256_file(step / "model.onnx")  # hash edited to match
    write_record(step / "manifest.json", manifest)  # and sealed again, as only the tool's own key can
    tampered = manifest["sha256"]

    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    assert "02_onnx_simplify: the cached artifact fails its gate, where it passed before" in capsys.readouterr().err
    row = next(a for a in json.loads(Path("artifacts/tiny/report.json").read_text())["artifacts"]
               if a["name"] == "onnx_simplify")
    assert row["rebuilt"] and not row["cached"] and row["parity"]["passed"] and row["sha256"] != tampered
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    assert report["shipped"] == "02_onnx_simplify/model.onnx"
