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

import inspect
from typing import Any

import torch

from pipeline.model.cache import CacheLayout


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

    def __init__(self, model: Any, layout: CacheLayout) -> None:
        super().__init__()
        self.model = model  # a transformers causal LM (its config builds the cache)
        self.layout = layout
        # transformers 5.25 renamed the cache argument and output from past_key_values to cache
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        if len(past) != 2 * self.layout.layers:
            raise ValueError(f"expected {2 * self.layout.layers} cache tensors, got {len(past)}")
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layout.layers)],
                             config=self.model.config)
        dtype = self.model.get_input_embeddings().weight.dtype
        mask, positions = decoder_mask(attention_mask, input_ids.shape[1], dtype)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_argument: cache})
        present = out[self.cache_argument]
        flat = [tensor for i in range(self.layout.layers) for tensor in (present.layers[i].keys,
                                                                         present.layers[i].values)]
        return (out.logits, *flat)


