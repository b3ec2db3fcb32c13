"""A decoder's key/value cache as flat tensors, without torch: the layout (names, shapes, dynamic
axes), the inputs a decoder takes, and how its outputs line up with the attention mask. Benchmark
workers of ONNX decoders and the parity metrics use it without loading torch; the torch wrapper that
exports a decoder this way is pipeline.model.decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import ModelError

PAST_PREFIX = "past_key_values."  # the cache inputs: <prefix><layer>.key and <prefix><layer>.value
INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class CacheLayout:
    """Shape of a decoder's key/value cache: layers, key/value heads (fewer than the query heads with
    grouped-query attention) and head size."""

    layers: int
    heads: int
    head_dim: int

    @property
    def past_names(self) -> list[str]:
        """Cache inputs, key then value for each layer."""
        return [f"{PAST_PREFIX}{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        """Cache outputs, in the order of :attr:`past_names`."""
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch and cache length are dynamic on every cache tensor."""
        axes = {name: {0: "batch", 2: "past_sequence"} for name in self.past_names}
        axes.update({name: {0: "batch", 2: "total_sequence"} for name in self.present_names})
        return axes

    def empty(self, batch: int, length: int = 0, seed: int | None = None) -> dict[str, np.ndarray]:
        """Cache tensors of ``length`` positions: zeros, or seeded normal values when ``seed`` is given."""
        shape = (batch, self.heads, length, self.head_dim)
        rng = np.random.default_rng(seed) if seed is not None else None
        return {name: (rng.standard_normal(shape).astype(np.float32) if rng is not None
                       else np.zeros(shape, dtype=np.float32)) for name in self.past_names}


def cache_layout(config: Any) -> CacheLayout:
    """The cache layout of a transformers decoder config."""
    try:
        layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
    except AttributeError as exc:
        raise ModelError(f"task text-generation: the model config has no layer, head or hidden size ({exc})") from None
    # grouped-query attention caches fewer key/value heads than it has query heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or int(hidden) // int(heads)
    return CacheLayout(int(layers), int(kv_heads), int(head_dim))


def check_inputs(names: list[str]) -> None:
    """A decoder takes exactly input_ids and attention_mask (the cache inputs are added to them)."""
    if list(names) != list(INPUTS):
        raise ModelError(f"inputs.names: task text-generation takes {', '.join(INPUTS)} (got {', '.join(names)})")


def prepare_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer set up for prompts: padding on the left (the last token of every row is real), and a
    pad token (GPT-2's tokenizer has none: its end-of-text token stands in, as ``generate`` does)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def with_cache(handle: Any, dynamic_axes: dict[str, dict[int, str]]) -> tuple[CacheLayout, dict[str, dict[int, str]]]:
    """Add the cache tensors to a decoder handle's inputs and outputs; returns the layout and the dynamic axes
    with the cache's added."""
    check_inputs(handle.input_names)
    if handle.output_names != ["logits"]:
        raise ModelError(f"inputs.outputs: task text-generation gives logits (and the cache), not "
                         f"{', '.join(handle.output_names)}")
    layout = cache_layout(handle.hf_config)
    handle.input_names = [*INPUTS, *layout.past_names]
    handle.output_names = ["logits", *layout.present_names]
    return layout, {**dynamic_axes, **layout.dynamic_axes()}


def comparable(name: str, value: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An output and the mask of its positions, aligned for the parity metrics (batch x positions x ...).

    A cache tensor (batch x heads x positions x size) is compared per position over past and current
    tokens; logits cover only the current tokens, the last columns of the attention mask.
    """
    if mask is None or value.ndim < 2:
        return value, mask
    if name.startswith("present.") and value.ndim == 4:
        return value.transpose(0, 2, 1, 3), mask
    return value, mask[:, mask.shape[1] - value.shape[1]:]
