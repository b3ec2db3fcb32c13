"""A run never loses work and never trusts a partial file: failing passes, kill -9, Ctrl-C,
concurrent runs, a full disk and a denied write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.core import disk
from pipeline.core.artifact import Artifact, Format, load_cached, read_manifest
from pipeline.core.output_folder import MARKER
from pipeline.core.store import TMP_PREFIX
from pipeline.engine.pass_api import Pass, PassConfig, PassContext, PassOutput
from pipeline.engine.registry import register
from pipeline.run.passed import PASSED
from pipeline.run.replay import RECORD
from pipeline.run.shipped import SHIPPED


@register
class Explode(Pass):
    """Always fails, as a pass with a bug would."""

    name = "test_explode"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = PassConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        (out_dir / "half-written.onnx").write_bytes(b"partial")
        raise RuntimeError("boom")


CHAIN = ["onnx_export", "onnx_simplify", {"fp16": {"from": "onnx_export"}}]


@pytest.fixture
def recipe(write_tiny_recipe: Callable[..., Path]) -> Path:
    return write_tiny_recipe("tiny", CHAIN, verify={"shapes": [[1, 9], [3, 77]]})


def _errors(capsys: pytest.CaptureFixture) -> list[str]:
    """The error lines on stderr (progress and warnings are logged there too)."""
    return [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]


def _intact(out: Path) -> None:
    """Every step folder verifies against its manifest, and no temporary is left."""
    steps = sorted(out.glob("[0-9]*"))
    assert steps
    for folder in steps:
        manifest = read_manifest(folder)
        assert manifest is not None and load_cached(folder, manifest["key"]) is not None, folder
    records = (".lock", MARKER, RECORD, PASSED, SHIPPED)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name not in records]
    assert json.loads((out / "report.json").read_text())["ok"]


def _default_sigint() -> None:
    """In the child, before exec: SIGINT as a terminal gives it, also when this suite runs as a
    background job (a shell hands its background jobs SIGINT ignored, and Python keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "optimize", str(recipe), "--no-bench", *extra],
                            cwd=recipe.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def test_a_failing_pass_exits_3_naming_it_and_earlier_steps_are_reused(recipe: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(recipe), "--no-bench", "--set", "passes=[onnx_export, test_explode]"]) == 3
    err = _errors(capsys)
    assert len(err) == 1 and "pass test_explode (step 02_test_explode, input 01_onnx_export) failed" in err[0]
    assert "RuntimeError: boom" in err[0]
    out = Path("artifacts/tiny")
    assert sorted(p.name for p in out.glob("[0-9]*")) == ["01_onnx_export"]
    key = read_manifest(out / "01_onnx_export")["key"]
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["cached"] and read_manifest(out / "01_onnx_export")["key"] == key


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


KILL_POINTS = {
    "reference-written": lambda out: (out / "reference" / "manifest.json").exists(),
    "inside-first-pass": lambda out: any(out.glob(f"{TMP_PREFIX}01_onnx_export-*")),
    "inside-second-pass": lambda out: any(out.glob(f"{TMP_PREFIX}02_onnx_simplify-*")),
    "after-the-chain": lambda out: (out / "03_fp16").exists(),
    "while-shipping": lambda out: any(out.glob(f"{TMP_PREFIX}ship-*")),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_at_any_point_then_the_same_run_completes(recipe: Path, point: str) -> None:
    out = recipe.parent / "artifacts" / "tiny"
    proc = _spawn(recipe)
    reached = _wait_for(lambda: KILL_POINTS[point](out), proc)
    proc.kill()
    proc.wait()
    assert reached, f"the run ended before {point}: {proc.stderr.read()[-2000:]}"
    again = _spawn(recipe)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    _intact(out)


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "code", "said"), [(signal.SIGINT, 130, "interrupted: stopped cleanly"),
                                                     (signal.SIGTERM, 143, "terminated: stopped cleanly")],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_cleanly_with_a_message(recipe: Path, sent: signal.Signals, code: int, said: str) -> None:
    out = recipe.parent / "artifacts" / "tiny"
    proc = _spawn(recipe)
    assert _wait_for(lambda: any(out.glob(f"{TMP_PREFIX}01_onnx_export-*")), proc)
    proc.send_signal(sent)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and said in err and "Traceback" not in err
    assert not any(out.glob(f"{TMP_PREFIX}*"))


@pytest.mark.slow
def test_two_runs_of_the_same_recipe_at_once_both_end_correctly(recipe: Path) -> None:
    first, second = _spawn(recipe), _spawn(recipe)
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [r[1][-1500:] for r in results]
    _intact(recipe.parent / "artifacts" / "tiny")


def test_disk_full_is_one_line_and_earlier_artifacts_stay(recipe: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    import tempfile

    real = tempfile.mkdtemp
    calls = []

    def mkdtemp(*args, **kwargs):
        calls.append(kwargs.get("prefix", ""))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    assert main(["optimize", str(recipe), "--no-bench"]) == 2  # the output folder's disk: the user's to free
    err = _errors(capsys)
    assert len(err) == 1 and "disk full writing artifacts/tiny" in err[0] and "free on that disk" in err[0]
    out = Path("artifacts/tiny")
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert load_cached(out / "01_onnx_export", read_manifest(out / "01_onnx_export")["key"]) is not None


def test_permission_denied_is_one_line(recipe: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    def deny(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", deny)
    assert main(["optimize", str(recipe), "--no-bench", "--out", "denied"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "denied: Permission denied" in err[0]


class _LoadMonitor:
    """While installed: every torch.load, torch.jit.load and torch.export.load, with whether it ran inside
    the loader's weights-only scope (pipeline/runtime/loaders.py); every global a full (unrestricted)
    unpickler resolves, and every pickle.load(s) and np.load(allow_pickle=True) call; and every global
    torch's weights-only unpickler reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import pickle

        import numpy as np
        import torch
        import torch._weights_only_unpickler as restricted

        from pipeline.runtime import loaders

        self.loads: list[tuple[str, bool]] = []
        self.resolved: list[tuple[str, str]] = []  # by a full unpickler: what weights-only must prevent
        self.read: list[tuple[str, str]] = []  # by the weights-only unpickler (refused unless allowed)
        self.unpickled: list[str] = []
        monitor = self

        def forced() -> bool:
            return os.environ.get(loaders.FORCE) == "1" and loaders.UNFORCE not in os.environ

        def spy(owner: object, name: str, label: str) -> None:
            real = getattr(owner, name)

            def call(*args: object, **kwargs: object) -> object:
                self.loads.append((label, forced()))
                return real(*args, **kwargs)

            monkeypatch.setattr(owner, name, call)

        spy(torch, "load", "torch.load")
        spy(torch.jit, "load", "torch.jit.load")
        spy(torch.export, "load", "torch.export.load")

        class Unpickler(pickle.Unpickler):  # torch's full load subclasses pickle.Unpickler when it is called
            def find_class(self, module: str, name: str) -> object:
                monitor.resolved.append((module, name))
                return super().find_class(module, name)

        monkeypatch.setattr(pickle, "Unpickler", Unpickler)

        def unpickling(owner: object, name: str, label: str, when: Callable[[dict], bool]) -> None:
            real = getattr(owner, name)

            def call(*args: object, **kwargs: object) -> object:
                if when(kwargs):
                    self.unpickled.append(label)
                return real(*args, **kwargs)

            monkeypatch.setattr(owner, name, call)

        unpickling(pickle, "load", "pickle.load", lambda _kwargs: True)
        unpickling(pickle, "loads", "pickle.loads", lambda _kwargs: True)
        unpickling(np, "load", "np.load(allow_pickle=True)", lambda kwargs: bool(kwargs.get("allow_pickle")))
        real_read = restricted._read_global_instruction

        def read_global(readline: Callable[[], bytes]) -> tuple[str, str]:
            found = real_read(readline)
            self.read.append(found)
            return found

        monkeypatch.setattr(restricted, "_read_global_instruction", read_global)


# what torch's weights-only unpickler may rebuild from a clean artifact: tensors, storages and containers
_ALLOWED_GLOBALS = {("collections", "OrderedDict"), ("builtins", "set"), ("__builtin__", "set")}


def test_every_torch_load_of_a_run_and_of_its_verify_is_weights_only(
        write_tiny_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torchscript and torch_export passes reload what they wrote, verification opens both artifacts, and
    the verify command opens them again: every torch load made runs inside the loader's weights-only scope,
    and no pickle is read by a full unpickler."""
    import io

    import torch

    recipe = write_tiny_recipe("torch_files", ["torchscript", {"torch_export": {"from": "eager"}}],
                               verify={"shapes": [[1, 9]], "sentence_batches": 1})
    monitor = _LoadMonitor(monkeypatch)
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    after_optimize = list(monitor.loads)
    assert main(["verify", str(recipe)]) == 0
    # live: both artifacts were loaded in each command (TorchScript by torch.jit, the .pt2's pickled sample
    # inputs by torch.load inside torch.export.load), and every load ran weights-only
    for loads in (after_optimize, monitor.loads[len(after_optimize):]):
        assert {"torch.jit.load", "torch.export.load", "torch.load"} <= {label for label, _ in loads}, loads
    assert [label for label, forced in monitor.loads if not forced] == []
    assert monitor.resolved == [] and monitor.unpickled == []
    assert monitor.read and all(module.split(".")[0] == "torch" or (module, name) in _ALLOWED_GLOBALS
                                for module, name in monitor.read), monitor.read

    # and the monitor tells: loads outside the loader are caught, a full unpickle names what it resolved
    torchscript = next((tmp_path / "artifacts" / "torch_files").glob("*_torchscript/model.pt"))
    torch.jit.load(str(torchscript))
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=False)
    assert [label for label, forced in monitor.loads if not forced] == ["torch.jit.load", "torch.load"]
    assert ("torch._utils", "_rebuild_tensor_v2") in monitor.resolved


class _System:
    """Unpickled without restriction, it runs a shell command through os.system."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def test_a_pt2_whose_pickle_names_os_system_is_refused_when_a_runner_opens_it(
        tiny_handle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened the way verification opens an artifact; the global is read, refused, and never resolved."""
    import io

    import torch

    from pipeline.core.errors import ArtifactError
    from pipeline.runtime.runner import Runner
    from tests.passes.export.tampering import member_name, rewrite

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.zeros(2, 3),)), str(path))
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save(_System(marker), payload)
    rewrite(path, {member_name(path, "data/sample_inputs/model.pt"): payload.getvalue()})
    monitor = _LoadMonitor(monkeypatch)
    artifact = Artifact(step_folder="01_torch_export", format=Format.TORCH_EXPORT, key="k", path=path)
    with pytest.raises(ArtifactError, match=r"model\.pt2: holds something other than .*calls (posix|os)\.system"):
        Runner(tiny_handle).open(artifact)
    assert not marker.exists()
    assert ("posix", "system") in monitor.read or ("os", "system") in monitor.read
    assert monitor.resolved == [] and monitor.unpickled == []
    assert [forced for _, forced in monitor.loads] and all(forced for _, forced in monitor.loads)


def _free_space(monkeypatch: pytest.MonkeyPatch, free: Callable[[Path], int]) -> None:
    import shutil as real_shutil

    usage = real_shutil.disk_usage

    def disk_usage(path: Path):
        total, used, _ = usage(path)
        return real_shutil._ntuple_diskusage(total, used, free(Path(path)))

    monkeypatch.setattr(disk.shutil, "disk_usage", disk_usage)


def test_a_step_is_not_started_without_room_for_it(recipe: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    _free_space(monkeypatch, lambda path: 10 << 20)
    assert main(["optimize", str(recipe), "--no-bench"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "step 01_onnx_export" in err[0] and "has 10.0 MiB free" in err[0]
    out = Path("artifacts/tiny")
    assert not list(out.glob("[0-9]*")) and not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_a_step_that_leaves_its_disk_full_is_not_kept(recipe: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """A native writer can stop at a full disk without an error: a step that fills the disk is not trusted."""
    _free_space(monkeypatch, lambda path: 0 if "02_onnx_simplify" in str(path) else 1 << 40)
    assert main(["optimize", str(recipe), "--no-bench"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "disk full writing artifacts/tiny/02_onnx_simplify" in err[0], err
    out = Path("artifacts/tiny")
    assert sorted(p.name for p in out.glob("[0-9]*")) == ["01_onnx_export"]
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_disk_full_while_shipping_names_the_file_being_written(recipe: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    from pipeline.ship import bundle as ship

    def copyfile(src: Path, dst: Path) -> None:  # as shutil reports it: the source as filename, dst as filename2
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(ship.shutil, "copyfile", copyfile)
    assert main(["optimize", str(recipe), "--no-bench"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "disk full writing artifacts/tiny/ship/model.onnx" in err[0], err
    assert "03_fp16" not in err[0] and "free on that disk" in err[0]
    out = Path("artifacts/tiny")
    assert not (out / "ship").exists() and not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
# disks that fill at different stages of the run (about 13.6 MB in all): the export, onnxsim, the later steps
# and the reference, the bundle
@pytest.mark.parametrize("size", ["3M", "9M", "12M", "13M", "13600k"])
def test_a_real_full_disk_is_one_line_and_leaves_no_temporary(recipe: Path, tmp_path: Path, size: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    disk_dir = tmp_path / "small-disk"
    if not _mount_tmpfs(disk_dir, size):
        pytest.skip("mounting a small tmpfs needs root")
    monkeypatch.setattr(disk, "MIN_FREE_BYTES", 0)  # let the steps start, so the disk fills while they write
    monkeypatch.setattr(disk, "GROWTH", 0)
    try:
        code = main(["optimize", str(recipe), "--no-bench", "--out", str(disk_dir / "out")])
        err = _errors(capsys)
        assert code == 2 and len(err) == 1, err
        assert "disk full writing" in err[0] and "free on that disk" in err[0] and TMP_PREFIX not in err[0]
        out = disk_dir / "out"
        assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
        for folder in out.glob("[0-9]*"):
            assert load_cached(folder, read_manifest(folder)["key"]) is not None, folder
    finally:
        subprocess.run(["umount", str(disk_dir)], check=False)
