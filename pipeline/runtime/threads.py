"""The process's thread count for torch, set once where a process starts its work (a run, a benchmark
worker), not by whatever opens a model. onnxruntime and OpenVINO take theirs per session."""

from __future__ import annotations


def set_torch_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads for the rest of this process (imports torch)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
