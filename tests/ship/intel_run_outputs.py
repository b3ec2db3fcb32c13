"""Run a shipped OpenVINO bundle with optimum-intel's OVModelForFeatureExtraction and save its outputs.

Run by the optimum-intel environment's python (``.venv-intel``), never by the main one:

    .venv-intel/bin/python tests/ship/intel_run_outputs.py BUNDLE_DIR CASES.npz OUT.npz

CASES.npz holds ``<case>/inputs/<name>`` arrays (other keys are ignored). The model is compiled with the bundle
manifest's ``openvino_config``; OUT.npz gets ``<case>/last_hidden_state`` for each case. The last line printed
is JSON: the optimum-intel version and the compiled model's dynamic quantization group size.
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

GROUP_OPTION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"


def compiled_group_size(model: Any) -> str | None:
    """The group size the compiled model runs with, when optimum-intel exposes its compiled model."""
    request: Any = getattr(model, "request", None)
    compiled = request.get_compiled_model() if hasattr(request, "get_compiled_model") else request
    try:
        return str(compiled.get_property(GROUP_OPTION))
    except (AttributeError, RuntimeError):
        return None


def main(bundle: Path, cases_path: Path, out_path: Path) -> int:
    """Load with the manifest's ov_config, run every case, save the outputs, print what ran."""
    from importlib.metadata import version

    import torch
    from optimum.intel import OVModelForFeatureExtraction

    config = json.loads((bundle / "manifest.json").read_text())["openvino_config"]
    model = OVModelForFeatureExtraction.from_pretrained(str(bundle), ov_config=config)
    inputs: dict[str, dict[str, np.ndarray]] = {}
    with np.load(cases_path, allow_pickle=False) as data:
        for key in data.files:
            parts = key.split("/")
            if len(parts) == 3 and parts[1] == "inputs":
                inputs.setdefault(parts[0], {})[parts[2]] = data[key]
    outputs = {f"{case}/last_hidden_state": model(**{k: torch.from_numpy(v) for k, v in feed.items()})
               .last_hidden_state.numpy() for case, feed in sorted(inputs.items())}
    np.savez(out_path, **outputs)
    print(json.dumps({"optimum_intel": version("optimum-intel"), "cases": len(outputs),
                      "group_size": compiled_group_size(model)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
