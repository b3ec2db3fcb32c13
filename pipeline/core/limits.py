"""Bounds on what a run reads, so a hostile or mistaken input is refused in one line instead of
exhausting memory: files (regular, capped in bytes and lines, UTF-8), YAML (aliases expanded), and the
(batch, sequence) shapes a run feeds the model (one forward pass estimated against available memory).
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from pipeline.core.errors import RecipeError

# -- files ------------------------------------------------------------------------------------
MAX_RECIPE_BYTES = 1 << 20  # a recipe file: 1 MiB (the shipped ones are under 4 KiB)
MAX_YAML_NODES = 100_000  # nodes of a recipe or --set value once every alias is expanded
MAX_YAML_DEPTH = 32  # lists and mappings inside each other (a recipe needs 5)
MAX_TEXT_BYTES = 64 << 20  # a sentence file (corpus, calibration) or a labeled accuracy file: 64 MiB
MAX_LINE_BYTES = 64 << 10  # one line of such a file: 64 KiB
MAX_SENTENCES = 100_000  # sentences in one sentence file
# -- shapes -----------------------------------------------------------------------------------
MAX_SENTENCE_TOKENS = 512  # tokens a batch of sentences is truncated to
MEMORY_FRACTION = 0.5  # share of the memory available at the start that one forward pass may take
# Eager PyTorch and the runtime under test hold a forward pass's tensors at once, allocator arenas round
# up, and every artifact's outputs are kept for comparison: a 4-step tiny-BERT chain peaked at 2.6 times
# the estimate below, a 7-step one at 4.3 times.
RUNTIME_FACTOR = 8
ACTIVATIONS_PER_HIDDEN = 10  # hidden-wide tensors alive in one layer: embeddings, q, k, v, context, residuals
SCORE_COPIES = 3  # attention scores, the masked scores and the softmax probabilities
FLOAT_BYTES = 4
MAX_TOKENS_UNSIZED = 1 << 18  # batch x sequence of one call when the model's config gives no sizes
GIB = float(1 << 30)

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


# -- files ------------------------------------------------------------------------------------
def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def _too_large(where: str, max_bytes: int, size: int | None = None) -> RecipeError:
    got = f"{size:,} bytes, " if size is not None else ""
    return RecipeError(f"{where}: {got}more than the {_mib(max_bytes)} limit")


def open_regular(path: Path, where: str, max_bytes: int) -> BinaryIO:
    """``path`` opened for reading in binary; RecipeError naming ``where`` when it is missing, not a
    regular file (a folder, a FIFO, a device) or larger than ``max_bytes``. A FIFO does not block it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RecipeError(f"{where}: no such file") from None
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "an unusual kind of file")
        problem = RecipeError(f"{where}: not a regular file ({kind})")
    elif info.st_size > max_bytes:
        problem = _too_large(where, max_bytes, info.st_size)
    if problem is not None:
        os.close(fd)
        raise problem
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_capped(path: Path, where: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, reading no more than one byte past it."""
    with open_regular(path, where, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # a file whose size stat does not tell (/proc) or that grew
        raise _too_large(where, max_bytes)
    return data


def _decoded(raw: bytes, where: str, number: int) -> str:
    if b"\0" in raw:
        raise RecipeError(f"{where} line {number}: binary or not UTF-8 text (a NUL byte)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where} line {number}: binary or not UTF-8 text "
                          f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None


def text_lines(path: Path, where: str) -> Iterator[str]:
    """Lines of a UTF-8 text file, line endings kept, read lazily in binary: at most MAX_LINE_BYTES
    each and MAX_TEXT_BYTES in all. Anything else is a RecipeError naming ``where`` and the line."""
    with open_regular(path, where, MAX_TEXT_BYTES) as handle:
        total = 0
        for number in itertools.count(1):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            total += len(raw)
            if total > MAX_TEXT_BYTES:
                raise _too_large(where, MAX_TEXT_BYTES)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise RecipeError(f"{where} line {number}: longer than {MAX_LINE_BYTES:,} bytes, the limit of a line")
            yield _decoded(raw, where, number)


# -- YAML -------------------------------------------------------------------------------------
def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Count the document's nodes with every alias expanded (memoised per node); refuse a count over
    MAX_YAML_NODES and an alias inside the node it names."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    aliased = False

    def size(node: yaml.Node) -> int:
        nonlocal aliased
        key = id(node)
        if key in sizes:
            aliased = True
            return sizes[key]
        if key in open_nodes:
            raise RecipeError(f"{where} line {node.start_mark.line + 1}: a YAML alias refers to a node that "
                              f"contains it (a recursive alias)")
        open_nodes.add(key)
        total = 1
        for child in _children(node):
            total += size(child)
            if total > MAX_YAML_NODES:
                what = "YAML aliases expand to" if aliased else "the YAML holds"
                raise RecipeError(f"{where}: {what} more than {MAX_YAML_NODES} nodes, the limit "
                                  f"(an alias counts as a copy of its anchor)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def _check_depth(root: yaml.Node, where: str) -> None:
    """RecipeError when lists and mappings nest deeper than MAX_YAML_DEPTH (an aliased node is walked
    again only when it is reached deeper)."""
    stack, deepest = [(root, 1)], dict[int, int]()
    while stack:
        node, depth = stack.pop()
        if deepest.get(id(node), 0) >= depth:
            continue
        deepest[id(node)] = depth
        if depth > MAX_YAML_DEPTH:
            raise RecipeError(f"{where} line {node.start_mark.line + 1}: lists and mappings nested more than "
                              f"{MAX_YAML_DEPTH} deep")
        stack.extend((child, depth + 1) for child in _children(node))


def load_yaml(text: str, where: str) -> Any:
    """One YAML document, composed and checked before it is built with yaml's safe loader (no tags that
    run code). RecipeError naming ``where`` when aliases expand past MAX_YAML_NODES, refer to their own
    node, or nesting is too deep; yaml.YAMLError when it does not parse."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        _check_depth(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise RecipeError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()


# -- shapes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """What one forward pass's memory depends on, from a transformers config."""

    hidden: int
    inner: int
    heads: int
    layers: int
    vocab: int


def _first(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_sizes(config: Any | None) -> Sizes | None:
    """The sizes of a transformers config (BERT and GPT-2 names), or None when it gives none."""
    if config is None:
        return None
    hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    heads = _first(config, "num_attention_heads", "n_head", "n_heads")
    layers = _first(config, "num_hidden_layers", "n_layer", "n_layers")
    if hidden is None or heads is None or layers is None:
        return None
    inner = _first(config, "intermediate_size", "n_inner", "hidden_dim", "ffn_dim") or 4 * hidden
    return Sizes(hidden, inner, heads, layers, _first(config, "vocab_size") or 0)


def forward_bytes(sizes: Sizes, batch: int, seq: int, generates: bool) -> int:
    """A conservative estimate of the peak memory a run needs for one call at (batch, seq)."""
    tokens = batch * seq
    elements = tokens * (ACTIVATIONS_PER_HIDDEN * sizes.hidden + 2 * sizes.inner)  # one layer's activations
    elements += SCORE_COPIES * batch * sizes.heads * seq * seq
    elements += tokens * sizes.hidden  # the hidden-state output
    if generates:  # logits over the vocabulary and the key/value cache of every layer
        elements += tokens * sizes.vocab + 2 * sizes.layers * tokens * sizes.hidden
    return FLOAT_BYTES * elements * RUNTIME_FACTOR


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available now: MemAvailable from /proc/meminfo, else free pages (None when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def run_shapes(recipe: Any, max_positions: int | None) -> list[tuple[str, int, int]]:
    """Every (batch, sequence) the run feeds the model in one call, with the recipe key it comes from."""
    verify, bench, inputs = recipe.verify, recipe.bench, recipe.inputs
    shapes = [(f"verify.shapes[{i}]", batch, seq) for i, (batch, seq) in enumerate(verify.shapes)]
    shapes.append(("inputs.export_batch/export_seq", inputs.export_batch, inputs.export_seq))
    if verify.sentence_batches:
        longest = min(max_positions or MAX_SENTENCE_TOKENS, MAX_SENTENCE_TOKENS)
        shapes.append(("verify.sentence_batch_size", verify.sentence_batch_size, longest))
    if bench.enabled:
        shapes += [("bench.batches x bench.seqs", batch, seq) for batch in bench.batches for seq in bench.seqs]
        if bench.real_data is not None:
            shapes.append(("bench.real_data", bench.real_data.batch, bench.real_data.max_length))
    return shapes


def check_memory(recipe: Any, config: Any | None, max_positions: int | None) -> None:
    """Refuse a shape whose forward pass would need more than MEMORY_FRACTION of the available memory;
    without a config to size it (a factory model), more than MAX_TOKENS_UNSIZED tokens in one call."""
    sizes = model_sizes(config)
    available = available_memory() if sizes is not None else None
    for key, batch, seq in run_shapes(recipe, max_positions):
        shown = f"{key}: batch {batch} x sequence {seq}"
        if sizes is None and batch * seq > MAX_TOKENS_UNSIZED:
            why = "a factory model" if config is None else "its config gives no layer sizes"
            raise RecipeError(f"{shown} is {batch * seq:,} tokens in one call, more than the "
                              f"{MAX_TOKENS_UNSIZED:,} allowed for a model whose memory cannot be estimated ({why})")
        if sizes is None or available is None:
            continue
        need = forward_bytes(sizes, batch, seq, recipe.task == "text-generation")
        if need > available * MEMORY_FRACTION:
            raise RecipeError(f"{shown} needs about {need / GIB:.1f} GiB, more than the "
                              f"{available * MEMORY_FRACTION / GIB:.1f} GiB this run may use "
                              f"({MEMORY_FRACTION:.0%} of the {available / GIB:.1f} GiB available)")
