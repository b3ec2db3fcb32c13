"""The parity gate fires: a sequence length baked into the graph, perturbed weights, an fp16 model giving Inf.

Each fault is made by a pass defined here, put into a real chain on the tiny BERT; the run must
exit 1, name the metric that missed, blame the faulty step, and ship nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

from passes._support import onnx_io as onnx_utils
from pipeline.cli import main
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import Pass, PassContext, PassOutput
from pipeline.engine.registry import register


def _rewrite(parent: Artifact, out_dir: Path, edit) -> PassOutput:
    model = onnx_utils.load_model(parent.path)
    edit(model)
    onnx.save_model(model, str(out_dir / "model.onnx"))
    return PassOutput(file="model.onnx", meta={"precision": parent.precision})


@register
class BakeSequence(Pass):
    """Reshapes the output to the export's sequence length, as a trace that recorded a size would:
    the graph's declared axes stay symbolic, so only running it at another shape shows the fault."""

    name = "test_bake_sequence"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        def edit(model: onnx.ModelProto) -> None:
            graph = model.graph
            out = graph.output[0].name
            for node in graph.node:
                node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
            shape = np.array([-1, ctx.io.export_seq, 0], dtype=np.int64)  # 0: keep the hidden size
            graph.initializer.append(numpy_helper.from_array(shape, "baked_shape"))
            graph.node.append(helper.make_node("Reshape", [f"{out}_pre", "baked_shape"], [out], name="baked"))
        return _rewrite(parent, out_dir, edit)


@register
class PerturbWeights(Pass):
    """Adds 1% noise to every float initializer."""

    name = "test_perturb_weights"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        def edit(model: onnx.ModelProto) -> None:
            rng = np.random.default_rng(0)
            for tensor in model.graph.initializer:
                value = numpy_helper.to_array(tensor)
                if value.dtype == np.float32 and value.size > 1:
                    noisy = value + 0.01 * rng.standard_normal(value.shape).astype(np.float32)
                    tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
        return _rewrite(parent, out_dir, edit)


@register
class Amplify(Pass):
    """Multiplies the output by 1e5: finite in fp32, beyond fp16's range (65504) once stored in fp16."""

    name = "test_amplify"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        def edit(model: onnx.ModelProto) -> None:
            graph = model.graph
            out = graph.output[0].name
            for node in graph.node:
                node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
            graph.initializer.append(numpy_helper.from_array(np.array(1e5, dtype=np.float32), "amplify_by"))
            graph.node.append(helper.make_node("Mul", [f"{out}_pre", "amplify_by"], [out], name="amplify"))
        return _rewrite(parent, out_dir, edit)


def _run(tmp_path: Path, config: Path, passes: list, ship: dict | None = None,
         **verify: object) -> tuple[int, dict, str]:
    recipe = tmp_path / "gate.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction", "passes": passes,
        "verify": {"shapes": [[1, 9], [3, 77]], "sentence_batches": 1, **verify}, "ship": ship or {},
    }))
    code = main(["optimize", str(recipe), "--no-bench", "--out", str(tmp_path / "out")])
    return code, json.loads((tmp_path / "out" / "report.json").read_text()), str(tmp_path / "out")


def _verdict(report: dict, name: str) -> dict:
    return next(a["parity"] for a in report["artifacts"] if a["pass"] == name or a["step"].endswith(name))


def test_baked_in_sequence_length_fails(tmp_path: Path, tiny_bert_config: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    code, report, _ = _run(tmp_path, tiny_bert_config, ["onnx_export", "test_bake_sequence"],
                           shapes=[[3, 77]], ship={"step": "test_bake_sequence"})
    parity = _verdict(report, "test_bake_sequence")
    assert code == 1 and not report["ok"] and report["shipped"] is None
    assert not parity["passed"] and "random_b3_s77 (3x77): does not run" in parity["failures"][-1]
    assert "does not run" in capsys.readouterr().out


def test_an_exempt_step_ships_despite_failing_and_the_report_says_so(tmp_path: Path,
                                                                     tiny_bert_config: Path) -> None:
    code, report, _ = _run(tmp_path, tiny_bert_config, ["onnx_export", "test_perturb_weights"],
                           exempt=["test_perturb_weights"])
    parity = _verdict(report, "test_perturb_weights")
    assert code == 0 and report["shipped_step"] == "test_perturb_weights"
    assert not parity["passed"] and parity["exempt"] is True


def test_perturbed_weights_fail_on_max_abs_and_are_blamed(tmp_path: Path, tiny_bert_config: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    code, report, out = _run(tmp_path, tiny_bert_config, ["onnx_export", "test_perturb_weights"],
                             ship={"step": "test_perturb_weights"})
    parity = _verdict(report, "test_perturb_weights")
    assert code == 1 and report["shipped"] is None
    assert any(f.startswith("last_hidden_state: max_abs") for f in parity["failures"]), parity["failures"]
    assert report["blame"]["step"] == "test_perturb_weights"
    assert "parity gate failed" in capsys.readouterr().out


def test_fp16_overflow_to_inf_fails(tmp_path: Path, tiny_bert_config: Path) -> None:
    code, report, _ = _run(tmp_path, tiny_bert_config,
                           ["onnx_export", "test_amplify", {"fp16": {"keep_io_types": False}}], ship={"step": "fp16"})
    parity = _verdict(report, "fp16")
    assert code == 1 and report["shipped"] is None
    assert any("INF values" in f for f in parity["failures"]), parity["failures"]
    assert parity["metrics"]["last_hidden_state"]["inf"] > 0
