"""A torch artifact is loaded without running anything it holds: a .pt2 archive whose pickles, guards or
symbolic expressions carry code, or that holds compiled code, and a TorchScript archive whose pickle
calls a Python function, are refused with an error naming the file, and the payload never runs."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.core.errors import ArtifactError
from pipeline.runtime.loaders import FORCE, UNFORCE, load_exported, load_torchscript, weights_only
from tests.passes.export.tampering import Member, edit_json, member_name, pickled, rewrite, torch_saved

Tamper = Callable[[Path, Path], tuple[dict[str, Member], dict[str, bytes]]]


class Tiny(torch.nn.Module):
    """Four features to two, scaled by a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.register_buffer("scale", torch.full((2,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch.export archive of Tiny with a dynamic batch (so it holds symbolic expressions)."""
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(Tiny().eval(), (torch.zeros(3, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture
def pt2(clean_pt2: Path, tmp_path: Path) -> Path:
    """A copy of the clean archive to tamper with."""
    path = tmp_path / "model.pt2"
    path.write_bytes(clean_pt2.read_bytes())
    return path


def _sample_inputs(archive: Path, marker: Path) -> tuple[dict[str, Member], dict[str, bytes]]:
    return {member_name(archive, "data/sample_inputs/model.pt"): torch_saved(marker)}, {}


def _pickled_weight(archive: Path, marker: Path) -> tuple[dict[str, Member], dict[str, bytes]]:
    def edit(config: Any) -> None:
        entry = next(iter(config["config"].values()))
        entry.update(use_pickle=True, path_name="payload")
    config = member_name(archive, "data/weights/model_weights_config.json")
    return {config: edit_json(edit)}, {"data/weights/payload": torch_saved(marker)}


def _opaque_constant(archive: Path, marker: Path) -> tuple[dict[str, Member], dict[str, bytes]]:
    def edit(config: Any) -> None:
        config["config"]["payload"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                       "tensor_meta": None}
    config = member_name(archive, "data/constants/model_constants_config.json")
    return {config: edit_json(edit)}, {"data/constants/opaque_obj_0": pickled(marker, protocol=4)}


def _guard(archive: Path, marker: Path) -> tuple[dict[str, Member], dict[str, bytes]]:
    def edit(program: Any) -> None:
        program["guards_code"].append(f"open({str(marker)!r}, 'w').write('x') > 0")
    return {member_name(archive, "models/model.json"): edit_json(edit)}, {}


def _expression(archive: Path, marker: Path) -> tuple[dict[str, Member], dict[str, bytes]]:
    def edit(data: bytes) -> bytes:
        text = data.decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        payload = f"__import__('builtins').open({str(marker)!r}, 'w').write('x') and "
        return (text[:start] + payload.replace("'", "\\u0027") + text[start:]).encode()
    return {member_name(archive, "models/model.json"): edit}, {}


def _compiled_code(_archive: Path, _marker: Path) -> tuple[dict[str, Member], dict[str, bytes]]:
    return {}, {"data/aotinductor/model/model.so": b"\x7fELF"}


# (case id, tamper, text the error must hold)
CASES: list[tuple[str, Tamper, str]] = [
    ("sample-inputs-pickle-calls-eval", _sample_inputs, "a pickle that calls eval"),
    ("pickled-weight-calls-eval", _pickled_weight, "a pickle that calls eval"),
    ("constant-is-a-pickled-object", _opaque_constant, "pickled Python object"),
    ("guard-runs-python", _guard, "a guard holds"),
    ("symbolic-expression-runs-python", _expression, "a symbolic expression holds"),
    ("aotinductor-shared-library", _compiled_code, "compiled code"),
]


def test_a_clean_archive_loads_and_runs(clean_pt2: Path) -> None:
    module = load_exported(clean_pt2)
    out = module(torch.ones(5, 4))
    assert tuple(out.shape) == (5, 2)


@pytest.mark.parametrize(("tamper", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_tampered_pt2_is_refused_and_its_payload_never_runs(tamper: Tamper, expected: str, pt2: Path,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rewrite(pt2, *tamper(pt2, marker))
    with pytest.raises(ArtifactError) as caught:
        load_exported(pt2)(torch.ones(2, 4))
    message = str(caught.value)
    assert str(pt2) in message and expected in message and "\n" not in message, message
    assert not marker.exists()


@pytest.mark.parametrize("tamper", [_sample_inputs, _guard], ids=["sample-inputs", "guard"])
def test_the_crafted_archives_are_live_under_a_plain_torch_export_load(tamper: Tamper, pt2: Path,
                                                                       tmp_path: Path) -> None:
    """What the loader stands between: torch.export.load itself runs these payloads."""
    marker = tmp_path / "pwned"
    rewrite(pt2, *tamper(pt2, marker))
    try:
        torch.export.load(str(pt2)).module()(torch.ones(2, 4))
    except Exception:  # the payload's return value may break the load after it ran
        pass
    assert marker.exists()


def test_weights_only_beats_an_explicit_false_and_restores_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    monkeypatch.setenv(UNFORCE, "1")
    monkeypatch.delenv(FORCE, raising=False)
    marker = tmp_path / "pwned"
    with weights_only(), pytest.raises(Exception, match="Weights only load failed"):
        torch.load(io.BytesIO(torch_saved(marker)), weights_only=False)
    assert not marker.exists()
    assert os.environ.get(UNFORCE) == "1" and FORCE not in os.environ
    assert torch.load(io.BytesIO(_tensor_bytes()), weights_only=True).shape == (3,)


def _tensor_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.zeros(3), buffer)
    return buffer.getvalue()


@pytest.fixture
def torchscript(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Tiny().eval(), torch.zeros(3, 4)), str(path))
    return path


def test_a_clean_torchscript_archive_loads_and_runs(torchscript: Path) -> None:
    assert tuple(load_torchscript(torchscript)(torch.ones(5, 4)).shape) == (5, 2)


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_a_torchscript_pickle_that_calls_eval_is_refused(member: str, torchscript: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = member_name(torchscript, member)
    rewrite(torchscript, {name: pickled(marker)})
    with pytest.raises(ArtifactError) as caught:
        load_torchscript(torchscript)
    assert str(torchscript) in str(caught.value) and f"{name} calls" in str(caught.value)
    assert "eval" in str(caught.value)
    with pytest.raises(RuntimeError, match="eval"):  # torch.jit's own unpickler refuses it too
        torch.jit.load(str(torchscript))
    assert not marker.exists()


def test_the_benchmark_worker_loads_through_the_same_loader(pt2: Path, tmp_path: Path) -> None:
    from pipeline.bench.worker import target_backend

    marker = tmp_path / "pwned"
    rewrite(pt2, *_sample_inputs(pt2, marker))
    spec: Any = {"target": "pt2", "format": "torch_export", "path": str(pt2), "device": "cpu", "threads": 1,
                 "input_names": ["x"], "output_names": ["y"]}
    with pytest.raises(ArtifactError, match="a pickle that calls eval"):
        target_backend(spec)
    assert not marker.exists()


def test_the_clean_archive_holds_what_the_cases_tamper_with(clean_pt2: Path) -> None:
    """The cases above edit members torch.export.save writes: a change of layout must fail here, not pass them."""
    with zipfile.ZipFile(clean_pt2) as archive:
        program = json.loads(archive.read(member_name(clean_pt2, "models/model.json")))
    assert '"expr_str"' in json.dumps(program) and isinstance(program["guards_code"], list)
    for relative in ("data/sample_inputs/model.pt", "data/weights/model_weights_config.json",
                     "data/constants/model_constants_config.json"):
        assert member_name(clean_pt2, relative)
