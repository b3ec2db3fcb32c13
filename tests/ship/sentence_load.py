"""Load a shipped bundle with sentence-transformers' onnx or openvino backend and save its sentence embeddings.

Run by the Optimum environment's python (``.venv-optimum``, backend onnx) or optimum-intel's (``.venv-intel``,
backend openvino), never by the main one (sentence-transformers loads those backends through Optimum):

    python tests/ship/sentence_load.py BUNDLE_DIR {onnx|openvino} TEXTS.json OUT.npy

The openvino backend compiles with the bundle's ``ov_compile_config.json`` (what it was verified with), as the
bundle's README says. The last line printed is JSON: the versions, the model's ``max_seq_length``, the tokens
each text kept, and the model file the backend loaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: the bundle must load on its own
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402


def loaded_file(model: Any) -> str | None:
    """The model file the backend's Optimum model was loaded from, when it says."""
    inner = getattr(model[0], "auto_model", None) or getattr(model[0], "model", None)
    for attribute in ("path", "model_path", "model_save_dir"):
        value = getattr(inner, attribute, None)
        if value is not None:
            return str(value)
    return None


def main(bundle: Path, backend: str, texts_path: Path, out_path: Path) -> int:
    from importlib.metadata import version

    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {}
    if backend == "openvino":
        kwargs["model_kwargs"] = {"ov_config": str(bundle / "ov_compile_config.json")}
    model = SentenceTransformer(str(bundle), backend=backend, device="cpu", **kwargs)
    texts = json.loads(texts_path.read_text(encoding="utf-8"))
    embeddings = model.encode(texts, batch_size=4, convert_to_numpy=True)
    np.save(out_path, np.asarray(embeddings, dtype=np.float32))
    kept = [int(count) for count in model.tokenize(texts)["attention_mask"].sum(1)]
    print(json.dumps({"sentence_transformers": version("sentence-transformers"),
                      "transformers": version("transformers"), "max_seq_length": model.max_seq_length,
                      "tokens": kept, "file": loaded_file(model), "modules": [type(m).__name__ for m in model]}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[2] not in ("onnx", "openvino"):
        print(f"usage: {Path(sys.argv[0]).name} BUNDLE_DIR {{onnx|openvino}} TEXTS.json OUT.npy", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
