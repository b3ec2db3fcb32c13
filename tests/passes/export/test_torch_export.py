"""Tests of the torch_export pass: a .pt2 that runs at shapes other than the export shape, in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from passes._support.onnx_io import max_abs_diff
from passes.export.torch_export import TorchExportConfig, TorchExportPass, dynamic_shapes
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import IOSpec, PassContext
from pipeline.runtime.runner import Runner, run_module

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def exported(tiny_ctx: PassContext, eager_artifact: Artifact, tmp_path: Path) -> Artifact:
    out = tmp_path / "pt2"
    out.mkdir()
    result = TorchExportPass(TorchExportConfig()).run(eager_artifact, tiny_ctx, out)
    assert result.file == "model.pt2" and result.meta["precision"] == "fp32"
    assert result.stats["nodes"] > 0 and len(result.stats["check"]) == 2
    return Artifact(step_folder="pt2", format=Format.TORCH_EXPORT, key="pt2", path=out / result.file, meta=result.meta)


def test_one_dim_per_axis_name_shared_across_inputs(tiny_io: IOSpec) -> None:
    shapes = dynamic_shapes(tiny_io, 128)
    assert len(shapes) == len(tiny_io.input_names)
    first = shapes[0]
    assert first is not None
    assert all(s is not None and s[0] is first[0] and s[1] is first[1] for s in shapes)


@pytest.mark.parametrize("batch, seq", [(1, 9), (3, 77)])
def test_the_program_runs_at_other_shapes_through_the_runner(exported: Artifact, tiny_ctx: PassContext,
                                                             batch: int, seq: int) -> None:
    inputs = tiny_ctx.sample_inputs(batch, seq)
    got = Runner(tiny_ctx.model).open(exported)(inputs)["last_hidden_state"]
    want = run_module(tiny_ctx.model.load().module, inputs, tiny_ctx.io.input_names,
                      tiny_ctx.io.output_names)["last_hidden_state"]
    assert got.shape == (batch, seq, 32)
    assert max_abs_diff(got, want, inputs["attention_mask"]) <= 1e-4


def test_a_fresh_process_loads_and_runs_it(exported: Artifact) -> None:
    probe = ("import sys, torch\n"
             "m = torch.export.load(sys.argv[1]).module()\n"
             "for b, s in [(1, 5), (4, 33)]:\n"
             "    ids = torch.randint(1, 90, (b, s))\n"
             "    out = m(ids, torch.ones_like(ids), torch.zeros_like(ids))\n"
             "    out = out[0] if isinstance(out, (tuple, list)) else out\n"
             "    assert tuple(out.shape) == (b, s, 32), out.shape\n"
             "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", probe, str(exported.path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
