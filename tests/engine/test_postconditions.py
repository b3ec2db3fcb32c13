"""The checks the manager runs after every ONNX step: a step that breaks one fails as a pass
(exit 3, naming the step and what is wrong) and leaves no artifact behind."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml

from passes._support import onnx_io
from pipeline.cli import main
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import IOSpec, Pass, PassContext, PassOutput
from pipeline.engine.postconditions import check_onnx
from pipeline.engine.registry import register


@register
class FixSequenceAxis(Pass):
    """Declares every input's sequence axis as the export length, as a careless export would."""

    name = "test_fix_sequence_axis"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        model = onnx_io.load_model(parent.path)
        for value in model.graph.input:
            value.type.tensor_type.shape.dim[1].dim_value = ctx.io.export_seq
        onnx.save_model(model, str(out_dir / "model.onnx"))
        return PassOutput(file="model.onnx", meta={"precision": parent.precision})


def _saved(tiny_onnx: Artifact, tmp_path: Path, edit) -> Path:
    model = onnx.load(str(tiny_onnx.path))
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save_model(model, str(path))
    return path


def test_a_dynamic_export_meets_them(tiny_onnx: Artifact, tiny_io: IOSpec) -> None:
    check_onnx(tiny_onnx.path, tiny_io)


def test_a_fixed_axis_is_named(tiny_onnx: Artifact, tiny_io: IOSpec, tmp_path: Path) -> None:
    def fix(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 16

    with pytest.raises(ValueError, match=r"fixed sizes in the graph: input_ids\[1\]=16"):
        check_onnx(_saved(tiny_onnx, tmp_path, fix), tiny_io)


def test_a_renamed_output_is_named(tiny_onnx: Artifact, tiny_io: IOSpec, tmp_path: Path) -> None:
    def rename(model: onnx.ModelProto) -> None:
        old = model.graph.output[0].name
        model.graph.output[0].name = "renamed"
        for node in model.graph.node:
            node.output[:] = ["renamed" if o == old else o for o in node.output]

    with pytest.raises(ValueError, match=r"graph outputs \['renamed'\] != the model's outputs"):
        check_onnx(_saved(tiny_onnx, tmp_path, rename), tiny_io)


def test_a_malformed_graph_fails_the_checker(tiny_onnx: Artifact, tiny_io: IOSpec, tmp_path: Path) -> None:
    def dangle(model: onnx.ModelProto) -> None:
        model.graph.node[0].input[0] = "no_such_tensor"

    with pytest.raises(Exception, match="no_such_tensor"):
        check_onnx(_saved(tiny_onnx, tmp_path, dangle), tiny_io)


def test_the_manager_fails_the_step_and_writes_nothing(tmp_path: Path, tiny_bert_config: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "fixed.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction", "passes": ["onnx_export", "test_fix_sequence_axis"],
        "verify": {"shapes": [[1, 9], [3, 77]], "sentence_batches": 1},
    }))
    out = tmp_path / "out"
    code = main(["optimize", str(recipe), "--no-bench", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "pass test_fix_sequence_axis (step 02_test_fix_sequence_axis)" in err
    assert "post-condition: dynamic axes are fixed sizes in the graph: input_ids[1]=" in err
    assert not (out / "02_test_fix_sequence_axis").exists()
    assert (out / "01_onnx_export" / "manifest.json").is_file()
    assert json.loads((out / "01_onnx_export" / "manifest.json").read_text())["pass"] == "onnx_export"
