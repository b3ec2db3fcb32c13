"""Export, optimize, verify and benchmark PyTorch / Hugging Face models from a YAML recipe."""

from __future__ import annotations

__version__ = "0.1.0"
