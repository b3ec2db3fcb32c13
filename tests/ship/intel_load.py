"""Load a shipped OpenVINO bundle with optimum-intel's OVModelForFeatureExtraction and check it against eager.

Run by the optimum-intel environment's python (``.venv-intel``), never by the main one:

    .venv-intel/bin/python tests/ship/intel_load.py BUNDLE_DIR CASES.npz

CASES.npz holds ``<case>/inputs/<name>`` and ``<case>/outputs/<name>`` arrays (eager PyTorch outputs).
The model is compiled with the bundle manifest's ``openvino_config`` (what it was verified with). Exit 0
when every case's last_hidden_state matches eager to ``ATOL`` at the positions the attention mask keeps.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: the bundle must load on its own
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402

ATOL = 1e-4


def main(bundle: Path, cases_path: Path) -> int:
    """Load, run every case, compare; print one line per failure and 'ok: ...' at the end."""
    from importlib.metadata import version

    import torch
    from optimum.intel import OVModelForFeatureExtraction

    config = json.loads((bundle / "manifest.json").read_text())["openvino_config"]
    model = OVModelForFeatureExtraction.from_pretrained(str(bundle), ov_config=config)
    cases: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    with np.load(cases_path, allow_pickle=False) as data:
        for key in data.files:
            case, kind, name = key.split("/")
            cases.setdefault(case, ({}, {}))[0 if kind == "inputs" else 1][name] = data[key]
    failures = 0
    for case, (inputs, outputs) in sorted(cases.items()):
        got = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state.numpy()
        keep = inputs["attention_mask"].astype(bool)
        diff = float(np.abs(got[keep] - outputs["last_hidden_state"][keep]).max())
        if not diff <= ATOL:
            print(f"{case}: max abs {diff:.3g} > {ATOL}")
            failures += 1
    print(f"ok: OVModelForFeatureExtraction, {len(cases)} cases, optimum-intel {version('optimum-intel')}"
          if not failures else f"{failures} case(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
