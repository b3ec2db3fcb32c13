"""Load a shipped bundle with Optimum's ORTModel classes and check it against the eager outputs.

Run by the Optimum environment's python (``.venv-optimum``, transformers 4.57), never by the main one:

    .venv-optimum/bin/python tests/optimum_load.py BUNDLE_DIR TASK CASES.npz

CASES.npz holds ``<case>/inputs/<name>`` and ``<case>/outputs/<name>`` arrays (eager PyTorch outputs),
plus ``texts`` and ``text/<name>``: sentences and what the main environment's tokenizer made of them.
Exit 0 when Optimum loads the bundle's own model.onnx, every output matches eager to ``ATOL`` at the
positions the attention mask keeps, and the bundle's tokenizer gives the same ids here; else 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: the bundle must load on its own
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402

ATOL = 1e-4
CLASSES = {
    "feature-extraction": ("ORTModelForFeatureExtraction", "last_hidden_state"),
    "text-classification": ("ORTModelForSequenceClassification", "logits"),
}
Arrays = dict[str, np.ndarray]


def read_cases(path: Path) -> tuple[dict[str, tuple[Arrays, Arrays]], list[str], Arrays]:
    """The cases {name: (inputs, outputs)}, the texts, and their token ids from the main environment."""
    cases: dict[str, tuple[Arrays, Arrays]] = {}
    with np.load(path, allow_pickle=False) as data:
        texts = [str(t) for t in data["texts"]]
        text_ids = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith("text/")}
        for key in data.files:
            parts = key.split("/")
            if len(parts) == 3:
                case, kind, name = parts
                cases.setdefault(case, ({}, {}))[0 if kind == "inputs" else 1][name] = data[key]
    return cases, texts, text_ids


def compare(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
    """Largest difference at kept positions: masked tokens for hidden states, every row for logits."""
    if got.shape != want.shape:
        return float("inf")
    if got.ndim == 3:
        keep = mask.astype(bool)
        got, want = got[keep], want[keep]
    return float(np.abs(got - want).max())


def check_outputs(model: object, output: str, cases: dict[str, tuple[Arrays, Arrays]]) -> list[str]:
    """One line per case whose output misses eager by more than ATOL."""
    failures = []
    for name, (inputs, outputs) in sorted(cases.items()):
        result = model(**inputs)  # type: ignore[operator]
        diff = compare(np.asarray(getattr(result, output)), outputs[output], inputs["attention_mask"])
        if not diff <= ATOL:
            failures.append(f"{name}: {output} max_abs {diff:.3g} > {ATOL}")
    return failures


def check_tokenizer(bundle: Path, texts: list[str], want: Arrays) -> list[str]:
    """The bundle's tokenizer, read by this transformers, must give the ids the main environment got."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundle))
    got = tokenizer(texts, padding=True, return_tensors="np")
    return [f"tokenizer: {name} differs from the main environment's" for name, ids in want.items()
            if name in got and not np.array_equal(got[name], ids)]


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[2] not in CLASSES:
        print(f"usage: {Path(argv[0]).name} BUNDLE_DIR {{{'|'.join(CLASSES)}}} CASES.npz", file=sys.stderr)
        return 2
    bundle, task, npz = Path(argv[1]), argv[2], Path(argv[3])
    import optimum.onnxruntime
    import transformers

    class_name, output = CLASSES[task]
    model = getattr(optimum.onnxruntime, class_name).from_pretrained(bundle)
    cases, texts, text_ids = read_cases(npz)
    failures = []
    if Path(model.path).resolve() != (bundle / "model.onnx").resolve():
        failures.append(f"Optimum loaded {model.path}, not the bundle's model.onnx")
    failures += check_outputs(model, output, cases)
    failures += check_tokenizer(bundle, texts, text_ids)
    for line in failures:
        print(f"FAIL {line}")
    if failures:
        return 1
    labels = f", labels {model.config.id2label}" if task == "text-classification" else ""
    print(f"ok: {class_name} ({model.config.model_type}{labels}) matches eager on {len(cases)} cases; "
          f"transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
