"""Decoder models with a key/value cache: flat cache tensors in and out, masks built with tensor ops.

transformers 5 keeps a decoder's cache in a ``DynamicCache`` object, which no exporter takes as a
graph input. :class:`DecoderWrapper` takes the cache as flat tensors (``past_key_values.<i>.key``,
``past_key_values.<i>.value``, shaped batch x heads x past x head size), rebuilds the cache, and
returns the logits and the grown cache (``present.<i>.key``, ``present.<i>.value``).

It builds the 4-D attention mask and the position ids itself, from the 2-D attention mask (past
and current tokens) with tensor operations only: transformers' own mask path reads the cache
length as a Python number, which a trace freezes into the graph, so an export made at one past
length gave outputs 0.15 away from eager at another. A 4-D mask is passed through untouched.

Positions follow ``generate``: the count of real tokens before a token, so a left-padded prompt
starts at position 0. A padded query may attend to itself, so no row of the mask is empty and
reduced precision cannot turn a padded position into NaN that a later step would read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.errors import ModelError

INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class CacheLayout:
    """Shape of a decoder's key/value cache: layers, heads and head size."""

    layers: int
    heads: int
    head_dim: int

    @property
    def past_names(self) -> list[str]:
        """Cache inputs, key then value for each layer."""
        return [f"past_key_values.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

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
    return CacheLayout(int(layers), int(heads), int(hidden) // int(heads))


def check_inputs(names: list[str]) -> None:
    """A decoder takes exactly input_ids and attention_mask (the cache inputs are added to them)."""
    if list(names) != list(INPUTS):
        raise ModelError(f"inputs.names: task text-generation takes {', '.join(INPUTS)} (got {', '.join(names)})")


def decoder_mask(attention_mask: torch.Tensor, seq: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(4-D additive mask batch x 1 x seq x total, position ids batch x seq) for the last ``seq`` tokens.

    Key j is visible to query i when j is a real token at or before i; a query always sees itself.
    """
    keep = attention_mask > 0
    index = torch.ones_like(attention_mask).cumsum(-1) - 1  # 0 .. total-1, built from the mask's own shape
    query = index[:, -seq:]
    causal = index[:, None, :] <= query[:, :, None]
    visible = causal & (keep[:, None, :] | (index[:, None, :] == query[:, :, None]))
    mask = torch.zeros_like(visible, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(~keep, 0)[:, -seq:]
    return mask[:, None, :, :], positions


class DecoderWrapper(torch.nn.Module):
    """A causal LM called as ``(input_ids, attention_mask, *cache)`` -> ``(logits, *new cache)``."""

    def __init__(self, model: torch.nn.Module, layout: CacheLayout) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        if len(past) != 2 * self.layout.layers:
            raise ValueError(f"expected {2 * self.layout.layers} cache tensors, got {len(past)}")
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layout.layers)],
                             config=self.model.config)
        dtype = self.model.get_input_embeddings().weight.dtype
        mask, positions = decoder_mask(attention_mask, input_ids.shape[1], dtype)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        present = out.past_key_values
        flat = [tensor for i in range(self.layout.layers) for tensor in (present.layers[i].keys,
                                                                         present.layers[i].values)]
        return (out.logits, *flat)


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
