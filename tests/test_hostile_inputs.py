"""A catalogue of hostile inputs against a folder that already holds a finished run: each exits 2 with
one line naming the problem, no traceback, and leaves every byte of the working folder (the output
folder and its parent) as it was. Then torch artifacts tampered with after a run: verify refuses to load
them, and what they carry never runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import main
from tests.passes.export.tampering import member_name, pickled, reseal, rewrite, torch_saved

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]",
                  *[f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]])
FLOW_BOMB = "[" + ", ".join(["&b0 [" + ", ".join(["x"] * 10) + "]",
                              *[f"&b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, 9)]]) + "]"
Setup = Callable[[Path, dict], tuple[dict | str, list[str]]]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> Path:
    """A working folder holding a recipe and its finished run (artifacts/tiny)."""
    work = tmp_path_factory.mktemp("finished")
    recipe = work / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tiny_bert_config)))
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert main(["optimize", str(recipe), "--no-bench"]) == 0
    finally:
        os.chdir(cwd)
    return work


def _recipe(config: Path) -> dict:
    return {"name": "tiny", "model": {"source": str(config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
            "task": "feature-extraction", "passes": ["onnx_export"],
            "verify": {"shapes": [[1, 9]], "sentence_batches": 1}}


def _model_folder(work: Path, config: Path) -> Path:
    """A model folder of the tiny BERT (random weights, safetensors)."""
    import transformers

    folder = work / "model"
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig.from_json_file(str(config))).save_pretrained(str(folder))
    return folder


def _with(path: str, value: object) -> Setup:
    """The base recipe with one key (dotted path) set."""
    def setup(_work: Path, recipe: dict) -> tuple[dict, list[str]]:
        node = recipe
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        return recipe, []
    return setup


def _text(text: str | bytes) -> Setup:
    def setup(work: Path, _recipe: dict) -> tuple[str, list[str]]:
        (work / "raw.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
        return "raw.yaml", []
    return setup


def _corpus(make: Callable[[Path], Path]) -> Setup:
    def setup(work: Path, recipe: dict) -> tuple[dict, list[str]]:
        recipe["inputs"] = {"corpus": str(make(work))}
        return recipe, []
    return setup


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        (work / name).write_bytes(content)
        return work / name
    return make


def _sparse(work: Path) -> Path:
    with open(work / "huge.txt", "wb") as handle:
        handle.truncate(1 << 30)
    return work / "huge.txt"


def _fifo(work: Path) -> Path:
    os.mkfifo(work / "pipe.txt")
    return work / "pipe.txt"


def _loop(work: Path) -> Path:
    (work / "loop.txt").symlink_to(work / "loop.txt")
    return work / "loop.txt"


def _calibration_binary(work: Path, recipe: dict) -> tuple[dict, list[str]]:
    (work / "calib.txt").write_bytes(bytes(range(256)) * 4)
    recipe["passes"] = ["onnx_export", {"int8_static": {"calibration": "calib.txt"}}]
    return recipe, []


def _args(*args: str) -> Setup:
    return lambda _work, recipe: (recipe, list(args))


def _foreign_out(work: Path, recipe: dict) -> tuple[dict, list[str]]:
    (work / "home" / ".ssh").mkdir(parents=True)
    (work / "home" / ".ssh" / "id_rsa").write_text("secret\n")
    (work / "home" / ".bashrc").write_text("alias ll='ls -l'\n")
    return recipe, ["--out", "home"]


def _file_out(work: Path, recipe: dict) -> tuple[dict, list[str]]:
    (work / "a-file").write_text("not a folder\n")
    return recipe, ["--out", "a-file"]


def _model(corrupt: Callable[[Path], None]) -> Setup:
    def setup(work: Path, recipe: dict) -> tuple[dict, list[str]]:
        folder = _model_folder(work, Path(recipe["model"]["source"]))
        corrupt(folder)
        recipe["model"]["source"] = str(folder)
        return recipe, []
    return setup


def _garbage_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "bert", ')


def _garbage_pickle(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04\x95garbage, not a pickle")


def _truncated_safetensors(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _fifo_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")


def _dev_zero_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")


def _folder_named(name: str) -> Callable[[Path], None]:
    """A folder where the model file ``name`` belongs (for a .bin, the safetensors file goes: it is the weights)."""
    def corrupt(folder: Path) -> None:
        for path in (folder / name, *([folder / "model.safetensors"] if name.endswith(".bin") else [])):
            path.unlink(missing_ok=True)
        (folder / name).mkdir()
    return corrupt


def _garbage_config_file(work: Path, recipe: dict) -> tuple[dict, list[str]]:
    (work / "arch.json").write_text("{not json")
    recipe["model"]["source"] = str(work / "arch.json")
    return recipe, []


# (case id, setup, text the one line must contain)
CASES = [
    ("recipe-over-the-size-limit", _text("# " + "x" * (2 << 20) + "\n"), "raw.yaml"),
    ("yaml-alias-bomb", _text(BOMB), "alias"),
    ("yaml-recursive-alias", _text("a: &a [*a]\n"), "raw.yaml"),
    ("yaml-python-tag", _text("model: !!python/object/apply:os.system ['touch pwned']\n"), "raw.yaml"),
    ("recipe-not-utf8", _text(b"\xff\xfe\x00m\x00o"), "raw.yaml"),
    ("recipe-is-a-folder", lambda work, recipe: (str(work / "artifacts"), []), "artifacts"),
    ("set-value-alias-bomb", _args("--set", "description=" + FLOW_BOMB), "--set"),
    ("corpus-binary", _corpus(_file("bin.txt", bytes(range(256)) * 64)), "bin.txt"),
    ("corpus-with-nul-byte", _corpus(_file("nul.txt", b"a sentence\x00 with a NUL\n")), "nul.txt"),
    ("corpus-sparse-1gb", _corpus(_sparse), "huge.txt"),
    ("corpus-fifo", _corpus(_fifo), "pipe.txt"),
    ("corpus-dev-zero", _corpus(lambda _work: Path("/dev/zero")), "/dev/zero"),
    ("corpus-symlink-loop", _corpus(_loop), "loop.txt"),
    ("calibration-binary", _calibration_binary, "calib.txt"),
    ("verify-shape-beyond-memory", _with("verify.shapes", [[100000, 8]]), "verify.shapes"),
    ("out-foreign-folder", _foreign_out, "--out home"),
    ("out-is-a-file", _file_out, "a-file"),
    ("out-climbs-out", _args("--out", "../escaped"), "'..'"),
    ("model-config-json-corrupt", _model(_garbage_config), "config.json"),
    ("model-pickle-garbage", _model(_garbage_pickle), "pytorch_model.bin"),
    ("model-safetensors-truncated", _model(_truncated_safetensors), "model.safetensors"),
    ("model-weights-fifo", _model(_fifo_weights), "model.safetensors: not a regular file (a FIFO)"),
    ("model-weights-dev-zero", _model(_dev_zero_weights),
     "model.safetensors: not a regular file (a character device)"),
    ("model-safetensors-is-a-folder", _model(_folder_named("model.safetensors")),
     "model.safetensors: not a regular file (a folder)"),
    ("model-pytorch-bin-is-a-folder", _model(_folder_named("pytorch_model.bin")),
     "pytorch_model.bin: not a regular file (a folder)"),
    ("model-config-is-a-folder", _model(_folder_named("config.json")), "config.json: not a regular file (a folder)"),
    ("architecture-file-not-json", _garbage_config_file, "arch.json"),
    ("factory-os-system", _with("model", {"factory": "os:system"}), "model.factory os:system"),
    ("factory-returns-a-string", _with("model", {"factory": "os:getcwd"}), "model.factory os:getcwd"),
]


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_exits_2_with_one_line_and_changes_nothing(
        setup: Setup, expected: str, finished_run: Path, tmp_path: Path, tiny_bert_config: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        tree_snapshot: Callable[[Path], dict[str, str]]) -> None:
    work = tmp_path / "work"
    shutil.copytree(finished_run, work, symlinks=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe, args = setup(work, _recipe(tiny_bert_config))
    if isinstance(recipe, dict):
        (work / "tiny.yaml").write_text(yaml.safe_dump(recipe))
        recipe = "tiny.yaml"
    before = tree_snapshot(tmp_path)
    code = main(["optimize", recipe, "--no-bench", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower() or "Trace" in line]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert "internal error" not in err[0]
    assert tree_snapshot(tmp_path) == before
    assert not (work / "pwned").exists() and not (tmp_path / "escaped").exists()


def test_the_catalogue_holds_at_least_15_cases() -> None:
    assert len(CASES) >= 15 and len({c[0] for c in CASES}) == len(CASES)


# (case id, the pass, the member replaced, the payload's form there)
TAMPERED = [
    ("torch-export-sample-inputs", {"torch_export": {}}, "data/sample_inputs/model.pt", torch_saved),
    ("torchscript-data-pkl", {"torchscript": {}}, "data.pkl", pickled),
]


@pytest.mark.parametrize(("step", "member", "payload"), [c[1:] for c in TAMPERED], ids=[c[0] for c in TAMPERED])
def test_a_tampered_torch_artifact_is_refused_and_never_run(
        step: dict, member: str, payload: Callable[[Path], bytes], write_tiny_recipe: Callable[..., Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = write_tiny_recipe("tampered", [step], verify={"shapes": [[1, 9]], "sentence_batches": 1})
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    folder = next((tmp_path / "artifacts").glob("*/01_*"))
    archive = next(path for path in folder.iterdir() if path.suffix in (".pt", ".pt2"))
    marker = tmp_path / "pwned"
    rewrite(archive, {member_name(archive, member): payload(marker)})
    reseal(folder)
    capsys.readouterr()
    code = main(["verify", str(recipe)])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower() or "Trace" in line]
    assert not marker.exists()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: ") and archive.name in err[0], err
    assert "holds something other than" in err[0] and "internal error" not in err[0], err
