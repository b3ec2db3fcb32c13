"""The deployment bundle on a tiny random BERT: contents, manifest, integrity check, Triton repository (opt-in),
loading (onnxruntime, torch.jit in a fresh process, OpenVINO), and atomic replacement."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml

from pipeline.core.errors import ArtifactError, ParityError
from pipeline.core.store import TMP_PREFIX
from pipeline.recipe.schema import ShipSpec
from pipeline.report.outcome import RunResult
from pipeline.run.optimize import run
from pipeline.run.prepare import prepare
from pipeline.ship import bundle as ship
from pipeline.ship.bundle import build_bundle, check_bundle
from pipeline.ship.triton import TensorSpec, config_pbtxt, graph_io

VERIFY = {"shapes": [[1, 9], [3, 77]], "sentence_batches": 2}
TEXT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def run_recipe(folder: Path, config: Path, passes: list[Any], out: Path | None = None,
               ship: dict[str, Any] | None = None) -> RunResult:
    """Write a recipe named ``tiny`` into ``folder``, run it there, and return the result."""
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction", "passes": passes, "verify": VERIFY, "ship": ship or {},
    }))
    result = run(prepare(recipe, out=out), bench="skip")
    assert result.shipped is not None
    return result


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> RunResult:
    """onnx_export then onnx_simplify, into an --out folder elsewhere than the working folder."""
    folder = tmp_path_factory.mktemp("ship_onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return run_recipe(folder, tiny_bert_config, ["onnx_export", "onnx_simplify"], out=folder / "runs" / "o")


@pytest.fixture(scope="module")
def onnx_bundle(onnx_run: RunResult) -> Path:
    return build_bundle(onnx_run)


def with_triton(result: RunResult, out_dir: Path) -> RunResult:
    """The same run with ``ship.triton: true``, shipping into ``out_dir``."""
    recipe = result.recipe.model_copy(update={"ship": ShipSpec(triton=True)})
    return dataclasses.replace(result, recipe=recipe, out_dir=out_dir)


@pytest.fixture(scope="module")
def triton_bundle(onnx_run: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(with_triton(onnx_run, tmp_path_factory.mktemp("triton")))


def manifest_of(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def reference_cases(out_dir: Path) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """The run's golden cases: {case: (inputs, eager outputs)}."""
    cases: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    with np.load(out_dir / "reference" / "reference.npz") as data:
        for key in data.files:
            case, kind, name = key.split("/")
            cases.setdefault(case, ({}, {}))[0 if kind == "inputs" else 1][name] = data[key]
    return cases


def kept_max_abs(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
    """Largest difference over the positions the attention mask keeps."""
    keep = mask.astype(bool)
    return float(np.abs(got[keep] - want[keep]).max())


# -- contents and manifest --------------------------------------------------------------------
def test_onnx_bundle_holds_model_config_tokenizer_and_manifest(onnx_run: RunResult, onnx_bundle: Path) -> None:
    assert onnx_bundle == onnx_run.out_dir / "ship"
    manifest = manifest_of(onnx_bundle)
    on_disk = {p.relative_to(onnx_bundle).as_posix() for p in onnx_bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    assert {"model.onnx", "config.json", "tokenizer_config.json", "README.md"} <= on_disk
    assert not (onnx_bundle / "triton").exists()  # opt-in (ship.triton): it would be a second copy of the model
    shipped = onnx_run.artifacts[onnx_run.shipped]
    assert manifest["files"]["model.onnx"] == shipped.sha256
    assert (manifest["format"], manifest["precision"], manifest["model_file"]) == ("onnx", "fp32", "model.onnx")
    assert (manifest["step"], manifest["task"], manifest["device"]) == ("02_onnx_simplify", "feature-extraction", "cpu")
    assert manifest["inputs"] == TEXT_NAMES and manifest["outputs"] == ["last_hidden_state"]
    assert manifest["random_weights"] is True and manifest["bench"] is None
    assert manifest["triton"] is None and manifest["readme"] == "README.md" and manifest["sentence"] is None
    assert manifest["requires"]["runtime"] == "onnxruntime" and manifest["requires"]["contrib_ops"] == []
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["versions"])
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["exempt"] is False and "cases" not in parity
    assert parity["metrics"]["last_hidden_state"]["max_abs"] < 1e-4
    assert parity["tolerance"]["last_hidden_state"]["max_abs"] == 1e-4
    # Paths are relative: nothing in the manifest names the output folder.
    assert str(onnx_run.out_dir) not in (onnx_bundle / "manifest.json").read_text()


def test_lineage_runs_from_the_source_model_to_the_shipped_step(onnx_run: RunResult, onnx_bundle: Path) -> None:
    source, *steps = manifest_of(onnx_bundle)["lineage"]
    assert source["source"]["model_type"] == "bert" and source["source"]["random_weights"] is True
    assert source["source"]["source_key"] == onnx_run.artifacts["eager"].key
    assert [(s["step"], s["pass"]) for s in steps] == [("01_onnx_export", "onnx_export"),
                                                      ("02_onnx_simplify", "onnx_simplify")]
    for entry in steps:
        artifact = onnx_run.artifacts[entry["name"]]
        assert (entry["sha256"], entry["key"]) == (artifact.sha256, artifact.key)
    assert steps[0]["config"]["opset"] == 17


def test_manifest_summarises_the_benchmark(onnx_run: RunResult, tmp_path: Path) -> None:
    row = {"batch": 1, "seq": 16, "p50_ms": 1.5, "p90_ms": 1.7, "p99_ms": 2.0, "mean_ms": 1.6, "cv": 0.02,
           "throughput": 650.0, "peak_rss_mb": 300.0, "samples_ms": [1.5] * 50}
    measured = {"rows": [row], "best_batch": {"batch": 8, "throughput": 900.0, "curve": [{"batch": 1}] * 9},
                "real_data": {"sentences": 64}, "fingerprint": {"cpu": "x"}, "load_seconds": 0.3}
    result = dataclasses.replace(onnx_run, out_dir=tmp_path,
                                 bench={onnx_run.shipped: measured},
                                 ratios=[{"target": onnx_run.shipped, "ratio": 2.0, "ci95": [1.9, 2.1]},
                                         {"target": "other", "ratio": 3.0, "ci95": [2.9, 3.1]}],
                                 unmeasured=[{"target": onnx_run.shipped, "batch": 8, "seq": 16, "measured": False,
                                              "reasons": ["not measured: every round was disturbed"]}])
    bench = manifest_of(build_bundle(result))["bench"]
    assert bench["rows"] == [{k: v for k, v in row.items() if k != "samples_ms"}]
    assert bench["ratios"] == [{"target": onnx_run.shipped, "ratio": 2.0, "ci95": [1.9, 2.1]}]
    assert [entry["measured"] for entry in bench["not_measured"]] == [False]  # the manifest says so too
    assert bench["best_batch"] == {"batch": 8, "throughput": 900.0}
    assert bench["real_data"] == {"sentences": 64} and bench["fingerprint"] == {"cpu": "x"}
    assert "load_seconds" not in bench


def test_config_and_tokenizer_load_back(onnx_run: RunResult, onnx_bundle: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(onnx_bundle))
    assert (config.model_type, config.architectures, config.hidden_size) == ("bert", ["BertModel"], 32)
    tokenizer = AutoTokenizer.from_pretrained(str(onnx_bundle))
    original = onnx_run.model.tokenizer
    text = ["A bundle ships what passed.", "Short."]
    assert tokenizer(text, padding=True)["input_ids"] == original(text, padding=True)["input_ids"]


def test_bundle_is_readable_by_others(onnx_bundle: Path) -> None:
    for path in [onnx_bundle, *onnx_bundle.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path


# -- integrity --------------------------------------------------------------------------------
def test_check_bundle_finds_a_changed_byte_a_deleted_file_and_an_added_one(onnx_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "moved" / "bundle"
    shutil.copytree(onnx_bundle, copy)
    assert check_bundle(copy) == []  # relocatable: every path in the manifest is relative

    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    (copy / "tokenizer_config.json").unlink()
    (copy / "notes").mkdir()
    (copy / "notes" / "notes.txt").write_text("not shipped")
    (copy / "README.md").write_text("edited")
    problems = check_bundle(copy)
    assert len(problems) == 4, problems
    assert problems[0].startswith("README.md: changed")
    assert problems[1].startswith("model.onnx: changed")
    assert problems[2] == "tokenizer_config.json: missing"
    assert problems[3] == "notes/notes.txt: not listed in manifest.json"


def test_check_bundle_without_a_manifest(onnx_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, copy)
    (copy / "manifest.json").write_text("{not json")
    assert check_bundle(copy) == ["manifest.json: missing or not valid JSON"]
    (copy / "manifest.json").unlink()
    assert check_bundle(copy) == ["manifest.json: missing or not valid JSON"]
    assert check_bundle(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: not a folder"]


# -- Triton -----------------------------------------------------------------------------------
PBTXT_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(-?\d+|[A-Za-z_]\w*)|([{}\[\]:,]))')
TOP_FIELDS = {"name", "platform", "max_batch_size", "input", "output", "dynamic_batching", "instance_group"}
TENSOR_FIELDS = {"name", "data_type", "dims", "reshape"}


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """A small reader of protobuf text format: every field maps to the list of its values."""
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = PBTXT_TOKEN.match(text, pos)
        assert match, f"unreadable config.pbtxt at {text[pos:pos + 30]!r}"
        tokens.append(next(group for group in match.groups() if group is not None))
        pos = match.end()
    message, end = _message(tokens, 0, None)
    assert end == len(tokens)
    return message


def _message(tokens: list[str], i: int, closing: str | None) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while i < len(tokens) and tokens[i] != closing:
        key = tokens[i]
        assert re.fullmatch(r"[a-z_]+", key), f"bad field name {key!r}"
        i += 1 + (tokens[i + 1] == ":")
        is_list = tokens[i] == "["
        value, i = _value(tokens, i)
        fields.setdefault(key, []).extend(value if is_list else [value])
    return fields, i


def _value(tokens: list[str], i: int) -> tuple[Any, int]:
    token = tokens[i]
    if token == "{":
        message, i = _message(tokens, i + 1, "}")
        return message, i + 1
    if token == "[":
        items, i = [], i + 1
        while tokens[i] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            i += tokens[i] == ","
        return items, i + 1
    if token.startswith('"'):
        return json.loads(token), i + 1
    return (int(token) if re.fullmatch(r"-?\d+", token) else token), i + 1


def test_triton_repository_matches_the_graph(triton_bundle: Path) -> None:
    import onnxruntime as ort

    repo = triton_bundle / "triton" / "tiny"
    assert (repo / "1" / "model.onnx").read_bytes() == (triton_bundle / "model.onnx").read_bytes()
    manifest = manifest_of(triton_bundle)
    assert manifest["triton"] == {"model": "tiny", "path": "triton/tiny", "copy_of": "model.onnx"}
    assert check_bundle(triton_bundle) == [] and "tritonserver --model-repository" in (
        triton_bundle / "README.md").read_text()
    config = parse_pbtxt((repo / "config.pbtxt").read_text())
    assert set(config) <= TOP_FIELDS
    assert config["name"] == ["tiny"] and config["platform"] == ["onnxruntime_onnx"]
    assert config["max_batch_size"] == [64]
    assert config["dynamic_batching"] == [{"max_queue_delay_microseconds": [100]}]
    assert config["instance_group"] == [{"count": [1], "kind": ["KIND_CPU"]}]
    for tensor in config["input"] + config["output"]:
        assert set(tensor) <= TENSOR_FIELDS
    inputs = {t["name"][0]: (t["data_type"][0], t["dims"]) for t in config["input"]}
    outputs = {t["name"][0]: (t["data_type"][0], t["dims"]) for t in config["output"]}
    assert inputs == {name: ("TYPE_INT64", [-1]) for name in TEXT_NAMES}
    assert outputs == {"last_hidden_state": ("TYPE_FP32", [-1, 32])}
    # The same names, in the same order, as onnxruntime sees in the served file.
    session = ort.InferenceSession(str(repo / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(inputs)
    assert [o.name for o in session.get_outputs()] == list(outputs)


def _graph(path: Path, batch: int | str) -> Path:
    """x (fp32) and n (int32) -> y = fp16(x) and m = n + n, with a fixed or symbolic batch axis."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16), helper.make_node("Add", ["n", "n"], ["m"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, "seq", 4]),
         helper.make_tensor_value_info("n", TensorProto.INT32, [batch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [batch, "seq", 4]),
         helper.make_tensor_value_info("m", TensorProto.INT32, [batch])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_triton_types_dims_and_a_fixed_batch_axis(tmp_path: Path) -> None:
    inputs, outputs = graph_io(_graph(tmp_path / "dynamic.onnx", "batch"))
    assert inputs == [TensorSpec("x", "TYPE_FP32", (-1, -1, 4)), TensorSpec("n", "TYPE_INT32", (-1,))]
    assert outputs == [TensorSpec("y", "TYPE_FP16", (-1, -1, 4)), TensorSpec("m", "TYPE_INT32", (-1,))]
    config = parse_pbtxt(config_pbtxt("g", inputs, outputs, device="cuda", max_batch_size=8))
    assert config["max_batch_size"] == [8] and config["instance_group"][0]["kind"] == ["KIND_GPU"]
    # One value per request: dims [1], reshaped to a scalar as Triton's own autofill does.
    assert config["input"][1] == {"name": ["n"], "data_type": ["TYPE_INT32"], "dims": [1], "reshape": [{"shape": []}]}

    inputs, outputs = graph_io(_graph(tmp_path / "fixed.onnx", 2))
    config = parse_pbtxt(config_pbtxt("g", inputs, outputs))
    assert config["max_batch_size"] == [0] and "dynamic_batching" not in config
    assert [t["dims"] for t in config["input"]] == [[2, -1, 4], [2]]


# -- loading ----------------------------------------------------------------------------------
def test_onnx_bundle_runs_in_onnxruntime_like_eager(onnx_run: RunResult, onnx_bundle: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    cases = reference_cases(onnx_run.out_dir)
    assert len(cases) == 4 + 16 + 1  # shapes and sentences; 16 sentences alone and in one padded batch
    for inputs, outputs in cases.values():
        (got,) = session.run(["last_hidden_state"], inputs)
        assert kept_max_abs(got, outputs["last_hidden_state"], inputs["attention_mask"]) < 1e-4


def test_external_data_bundle(tmp_path: Path, tiny_bert_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    result = run_recipe(tmp_path, tiny_bert_config, [{"onnx_export": {"external_data": "always"}}],
                        ship={"triton": True})
    bundle = build_bundle(result)
    files = set(manifest_of(bundle)["files"])
    # Triton's layout for a multi-file ONNX model: a folder named model.onnx in the version folder.
    assert {"model.onnx", "model.onnx.data", "triton/tiny/1/model.onnx/model.onnx",
            "triton/tiny/1/model.onnx/model.onnx.data"} <= files
    assert check_bundle(bundle) == []
    inputs, outputs = next(iter(reference_cases(result.out_dir).values()))
    for path in (bundle / "model.onnx", bundle / "triton/tiny/1/model.onnx/model.onnx"):
        (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
        assert kept_max_abs(got, outputs["last_hidden_state"], inputs["attention_mask"]) < 1e-4


TORCHSCRIPT_LOADER = """
import sys, numpy as np, torch
module = torch.jit.load(sys.argv[1])
with np.load(sys.argv[2]) as data:
    inputs = [torch.from_numpy(data["inputs/" + n]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    want, mask = data["outputs/last_hidden_state"], data["inputs/attention_mask"].astype(bool)
with torch.inference_mode():
    got = module(*inputs)[0].numpy()
diff = float(np.abs(got[mask] - want[mask]).max())
print(f"max_abs {diff:.3g}")
sys.exit(0 if diff < 1e-4 else 1)
"""


def test_torchscript_bundle_loads_in_a_fresh_process(tmp_path: Path, tiny_bert_config: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_recipe(tmp_path, tiny_bert_config, [{"torchscript": {"mode": "trace"}}])
    bundle = build_bundle(result)
    assert bundle == Path("artifacts/tiny/ship")
    manifest = manifest_of(bundle)
    assert (manifest["format"], manifest["model_file"], manifest["triton"]) == ("torchscript", "model.pt", None)
    assert {"model.pt", "config.json", "tokenizer_config.json", "README.md"} <= set(manifest["files"])
    assert manifest["requires"]["runtime"] == "torch" and "torch.jit.load" in (bundle / "README.md").read_text()
    assert not (bundle / "triton").exists() and check_bundle(bundle) == []

    inputs, outputs = reference_cases(result.out_dir)["random_b3_s77"]
    case = tmp_path / "case.npz"
    np.savez(case, **{f"inputs/{k}": v for k, v in inputs.items()}, **{f"outputs/{k}": v for k, v in outputs.items()})
    proc = subprocess.run([sys.executable, "-c", TORCHSCRIPT_LOADER, str(bundle / "model.pt"), str(case)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openvino_bundle_uses_optimum_intel_names_and_loads_with_openvino(tmp_path: Path, tiny_bert_config: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
    monkeypatch.chdir(tmp_path)
    result = run_recipe(tmp_path, tiny_bert_config, ["onnx_export", "openvino_convert"])
    bundle = build_bundle(result)
    manifest = manifest_of(bundle)
    assert (manifest["format"], manifest["model_file"], manifest["triton"]) == ("openvino", "openvino_model.xml", None)
    assert {"openvino_model.xml", "openvino_model.bin", "config.json"} <= set(manifest["files"])
    assert not (bundle / "model.xml").exists() and check_bundle(bundle) == []
    assert manifest["openvino_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    # the compile options, as a file of their own (SentenceTransformer takes its path) and in `requires`
    assert json.loads((bundle / "ov_compile_config.json").read_text()) == manifest["openvino_config"]
    requires = manifest["requires"]
    assert (requires["runtime"], requires["device"], requires["ir_version"]) == ("openvino", "CPU", 11)
    assert requires["compile_config"] == manifest["openvino_config"]
    assert requires["min_version"] == requires["verified_with"] == ov.__version__.split("-")[0]
    assert "ov_compile_config.json" in (bundle / "README.md").read_text()

    inputs, outputs = reference_cases(result.out_dir)["random_b3_s77"]
    model = ov.Core().read_model(str(bundle / "openvino_model.xml"))
    compiled = ov.Core().compile_model(model, "CPU", manifest["openvino_config"])
    got = compiled.create_infer_request().infer({port.get_any_name(): inputs[port.get_any_name()]
                                                 for port in compiled.inputs})[compiled.outputs[0]]
    assert kept_max_abs(np.asarray(got), outputs["last_hidden_state"], inputs["attention_mask"]) < 1e-4


# -- atomicity and refusals -------------------------------------------------------------------
@pytest.mark.parametrize("where", ["write_tokenizer", "write_repository", "write_readme", "bundle_manifest"])
def test_a_failed_rebuild_leaves_the_previous_bundle_whole(onnx_run: RunResult, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    out = tmp_path / "out"
    result = with_triton(onnx_run, out)
    bundle = build_bundle(result)
    before = (bundle / "manifest.json").read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        staging = next(out.glob(f"{TMP_PREFIX}ship-*"))  # the new bundle, half written
        (staging / "half-written").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ship, where, broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_bundle(result)
    assert check_bundle(bundle) == [] and (bundle / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["ship"]  # no staging folder left behind


def test_nothing_to_ship_and_a_tampered_step_are_refused(onnx_run: RunResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="nothing to ship"):
        build_bundle(dataclasses.replace(onnx_run, out_dir=out, shipped=None))

    name = onnx_run.shipped
    assert name is not None
    artifact = onnx_run.artifacts[name]
    assert artifact.path is not None
    step = tmp_path / "step"
    shutil.copytree(artifact.path.parent, step)
    (step / "model.onnx").write_bytes((step / "model.onnx").read_bytes()[:-1])
    tampered = {**onnx_run.artifacts, name: dataclasses.replace(artifact, path=step / "model.onnx")}
    with pytest.raises(ArtifactError, match="model.onnx"):
        build_bundle(dataclasses.replace(onnx_run, out_dir=out, artifacts=tampered))
    assert not (out / "ship").exists()
