"""The bundle of a decoder (task text-generation) loads for generation as it is.

Optimum's ``ORTModelForCausalLM`` (optimum-onnx) loads an ONNX bundle and optimum-intel's ``OVModelForCausalLM``
an OpenVINO IR, both as a stateless model with its cache as inputs and outputs (``use_cache=True``; for the IR
``stateful=False``): the graph takes ``input_ids``, ``attention_mask`` and ``past_key_values.<i>.key`` / ``.value``
and returns ``logits`` and ``present.<i>.key`` / ``.value``, the names both classes look for. It has no
``position_ids`` input: positions come from the attention mask inside the graph, as ``generate`` counts them with
left padding, and both classes feed only the inputs a graph declares (ORTModelForCausalLM warns that a Llama graph
without that input is a "legacy" one, and that a later optimum-onnx may stop loading such graphs).

Beside the model the bundle holds ``generation_config.json`` (the source's, with the pad token the prompts were
padded with) and a tokenizer that pads on the left and gives ``input_ids`` and ``attention_mask`` only, which is
what ``generate`` is called with. ``config.json`` also carries the rotary settings under the names transformers 4
reads (``rope_theta``, ``rope_scaling``), since optimum-onnx pins a transformers 4 release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.core.artifact import Artifact, Format
from pipeline.core.store import json_safe, read_json, write_json_atomic
from pipeline.model.cache import INPUTS, cache_layout
from pipeline.model.loading import ModelHandle
from pipeline.runtime.sessions import OPENVINO_DEVICES, PROVIDERS
from pipeline.ship.requires import generation_requirements

log = logging.getLogger(__name__)

TASK = "text-generation"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# the module of each format's class (pipeline.ship.requires names the class and its package) and what it is given
LOADERS: dict[Format, tuple[str, dict[str, Any]]] = {
    Format.ONNX: ("optimum.onnxruntime", {"use_cache": True, "use_io_binding": False}),
    Format.OPENVINO: ("optimum.intel", {"use_cache": True, "stateful": False}),
}
# transformers 5's TokenizersBackend is PreTrainedTokenizerFast to transformers 4 (which knows no other name)
TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def is_decoder(handle: ModelHandle) -> bool:
    """Whether the bundle is a decoder's, laid out for generation."""
    return handle.task == TASK


def generation_summary(handle: ModelHandle, artifact: Artifact, device: str) -> dict[str, Any] | None:
    """manifest.json's ``generation`` entry: the class that loads the bundle for ``generate`` (None for a format
    neither class loads), how it is called, the cache layout, and the decoding the gate checked (greedy)."""
    if not is_decoder(handle):
        return None
    layout = cache_layout(handle.hf_config)
    loader = LOADERS.get(artifact.format)
    summary: dict[str, Any] = {
        "generation_config": GENERATION_CONFIG, "padding_side": "left", "position_ids": "from attention_mask",
        "cache": {"layers": layout.layers, "kv_heads": layout.heads, "head_dim": layout.head_dim},
        "greedy": {"do_sample": False, "num_beams": 1}, "loader": None,
    }
    package = generation_requirements(artifact.format)
    if loader is not None and package is not None:
        module, kwargs = loader
        where = {"provider": PROVIDERS.get(device)} if artifact.format is Format.ONNX else \
            {"device": OPENVINO_DEVICES.get(device, device.upper())}
        summary["loader"] = {"package": package["package"], "module": module, "class": package["class"],
                             "kwargs": {**kwargs, **where}}
    return summary


def legacy_config(data: dict[str, Any]) -> dict[str, Any]:
    """A decoder's config.json as transformers 4 and 5 both read it: the rotary settings under the names of
    each (transformers 5's ``rope_parameters``, 4's ``rope_theta`` and ``rope_scaling``), without the private
    entries a loader left (a GGUF file's ``_model_name_or_path``)."""
    out = {key: value for key, value in data.items() if not key.startswith("_")}
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            out.setdefault("rope_scaling", {key: value for key, value in rope.items() if key != "rope_theta"})
    return out


def write_generation_config(handle: ModelHandle, dest: Path) -> None:
    """generation_config.json: the source's own (its folder's, the hub cache's, or made from its config as
    transformers does for a GGUF file or a config), with the tokenizer's pad token where it names none."""
    config = source_generation_config(handle)
    if config is None:
        return
    tokenizer = handle.tokenizer
    if config.pad_token_id is None and tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
    write_json_atomic(dest / GENERATION_CONFIG, json_safe(config.to_diff_dict()))


def source_generation_config(handle: ModelHandle) -> Any | None:
    """The source model's GenerationConfig, read offline (None for a model without a transformers config)."""
    from transformers import GenerationConfig

    kind, where = handle.location
    if kind in ("packaged", "folder", "hub"):
        try:
            return GenerationConfig.from_pretrained(where, local_files_only=True)
        except OSError:
            log.debug("%s has no generation config; making one from its config", where)
    model_config = handle.hf_config
    return GenerationConfig.from_model_config(model_config) if model_config is not None else None


def finish_tokenizer(dest: Path, decoder: bool) -> None:
    """tokenizer_config.json, when there is one, with its class under a name transformers 4 knows too; for a
    decoder, as ``generate`` wants it: left padding, and input_ids and attention_mask only (a BERT tokenizer also
    gives token_type_ids, which generate refuses)."""
    path = dest / TOKENIZER_CONFIG
    config = read_json(path) if path.is_file() else None
    if config is None:
        return
    name = config.get("tokenizer_class")
    wanted: dict[str, Any] = {}
    if isinstance(name, str) and name in TOKENIZER_CLASSES:
        wanted["tokenizer_class"] = TOKENIZER_CLASSES[name]
    if decoder:
        wanted.update(padding_side="left", model_input_names=list(INPUTS))
    if wanted:
        write_json_atomic(path, {**config, **wanted})
