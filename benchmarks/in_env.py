"""Start a benchmark worker with another environment's python, for ``pipeline.bench.pool``, which starts
every worker with this one's:

    python -m benchmarks.in_env SPEC.json      (from the repository root)

replaces itself (same process id, stdin and stdout) with ``spec["python"] -m spec["module"] SPEC.json``,
without this environment's variables (VIRTUAL_ENV, PYTHONPATH, PYTHONHOME) and offline.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    """Exec the spec's python on the spec's module."""
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    python = spec["python"]
    os.execve(python, [python, "-m", spec["module"], argv[0]], env)


if __name__ == "__main__":
    main(sys.argv[1:])
