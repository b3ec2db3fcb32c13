"""The catalogue of bad input: each exits 2 with one line naming the problem, no traceback, and
nothing written under artifacts/."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main


def base(config: str) -> dict:
    return {"model": {"source": config, "tokenizer": "packaged:all-MiniLM-L6-v2"}, "task": "feature-extraction",
            "passes": ["onnx_export", "onnx_simplify"], "verify": {"shapes": [[1, 9]]}}


def edit(path: str, value: object):
    """A change to the base recipe at a dotted path (a value of DELETE removes the key)."""
    def apply(recipe: dict) -> dict:
        node = recipe
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value == "DELETE":
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
        return recipe
    return apply


# (case id, change to the recipe or raw text, extra arguments, text the one line must contain)
CASES = [
    ("broken-yaml", "model: [unclosed\ntask: x\n", [], "line"),
    ("top-level-list", "- a\n- b\n", [], "the top level must be a mapping"),
    ("empty-file", "", [], "the top level must be a mapping"),
    ("wrong-type", edit("inputs", {"export_batch": "two"}), [], "inputs.export_batch"),
    ("unknown-pass", edit("passes", ["onnx_export", "onnx_simplfy"]), [], "did you mean onnx_simplify?"),
    ("unknown-pass-key", edit("passes", ["onnx_export", {"fp16": {"keep_io_type": True}}]), [],
     "passes[1].fp16.keep_io_type: unknown key; did you mean keep_io_types?"),
    ("unknown-top-key", edit("pases", []), [], "pases: unknown key; did you mean passes?"),
    ("wrong-order", edit("passes", ["fp16", "onnx_export"]), [], "passes[0].fp16: reads onnx"),
    ("missing-model-folder", edit("model.source", "./no-such-model/"), [], "no-such-model"),
    ("missing-config-file", edit("model.source", "missing.json"), [], "config file missing.json does not exist"),
    ("unknown-packaged", edit("model.source", "packaged:nope"), [], "unknown packaged model 'nope'"),
    ("missing-calibration", edit("passes", ["onnx_export", {"int8_static": {"calibration": "nope.txt"}}]), [],
     "int8_static.calibration"),
    ("negative-batch", edit("bench", {"batches": [-1]}), [], "at least 1"),
    ("zero-export-batch", edit("inputs", {"export_batch": 0}), [], "inputs.export_batch"),
    ("seq-above-max-positions", edit("verify.shapes", [[1, 4000]]), [], "exceeds the model's 128 positions"),
    ("export-seq-above-max", edit("inputs", {"export_seq": 999}), [], "inputs.export_seq: 999 exceeds"),
    ("no-passes", edit("passes", []), [], "passes: the chain is empty"),
    ("name-climbs-out", edit("name", "../../etc"), [], "name: '../../etc'"),
    ("out-climbs-out", None, ["--out", "../../outside"], "--out ../../outside"),
    ("absurd-grid", edit("bench", {"batches": list(range(1, 40)), "seqs": list(range(1, 40))}), [],
     "grid points: at most 64"),
    ("absurd-batch", edit("bench", {"batches": [1_000_000]}), [], "at most 4096"),
    ("unknown-task", edit("task", "translation"), [], "unknown task 'translation'"),
    ("bad-factory", {"model": {"factory": "no_colon"}, "task": "feature-extraction", "passes": ["onnx_export"]},
     [], "model.factory"),
    ("source-and-factory", edit("model.factory", "a.b:c"), [], "exactly one of model.source and model.factory"),
    ("unknown-precision", edit("verify.tolerance", {"fp8": {"max_abs": 1}}), [], "verify.tolerance.fp8"),
    ("unknown-ship-step", edit("ship", {"step": "nope"}), [], "ship.step: no step named 'nope'"),
    ("unknown-exempt-step", edit("verify.exempt", ["nope"]), [], "verify.exempt: no step named 'nope'"),
    ("unknown-from", edit("passes", ["onnx_export", {"fp16": {"from": "later"}}]), [], "no earlier step 'later'"),
    ("duplicate-step", edit("passes", ["onnx_export", "fp16", {"fp16": {"from": "onnx_export"}}]), [],
     "give this one a name"),
    ("opset-out-of-range", edit("passes", [{"onnx_export": {"opset": 99}}]), [], "passes[0].onnx_export.opset"),
    ("bad-weights-value", edit("model.weights", "randomish"), [], "model.weights"),
    ("set-without-equals", None, ["--set", "model.weights"], "expected key=value"),
    ("limit-zero", None, ["--limit", "0"], "--limit: must be at least 1"),
    ("missing-corpus", edit("inputs", {"corpus": "nope.txt"}), [], "inputs.corpus: file nope.txt does not exist"),
    ("missing-accuracy-file", edit("verify.accuracy", {"file": "nope.csv"}), [], "verify.accuracy"),
    ("hub-model-offline", edit("model.source", "no-such-org/no-such-model"), [], "hub is unreachable"),
    ("unknown-output", edit("inputs", {"outputs": ["last_hiden_state"]}), [],
     "inputs.outputs: 'last_hiden_state' is not an output of BertModel; it gives last_hidden_state, pooler_output"),
    ("unknown-input", edit("inputs", {"names": ["input_ids", "atention_mask"]}), [], "inputs.names: 'atention_mask'"),
]


@pytest.mark.parametrize(("change", "args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(change, args: list[str], expected: str, tmp_path: Path,
                                         tiny_bert_config: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "bad.yaml"
    if isinstance(change, str):
        recipe.write_text(change)
    else:
        content = change if isinstance(change, dict) else base(str(tiny_bert_config))
        if callable(change):
            content = change(copy.deepcopy(content))
        recipe.write_text(yaml.safe_dump(content))
    code = main(["optimize", str(recipe), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "artifacts").exists()


def test_the_catalogue_holds_at_least_25_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("kind", ["missing", "file", "dangling-link"])
def test_ship_check_of_no_folder_exits_2_naming_it_once(kind: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "bundle"
    if kind == "file":
        target.write_text("not a bundle")
    elif kind == "dangling-link":
        target.symlink_to(tmp_path / "gone")
    code = main(["ship", "--check", str(target)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ship --check: ") and err[0].count(str(target)) == 1, err
    assert ("is not a folder" if kind == "file" else "does not exist") in err[0]
    assert captured.out == ""
