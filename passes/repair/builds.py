"""The builds of a repair: numbered files in a scratch folder, made one at a time, or several at once in
worker processes when a build is slow, single-threaded Python (onnxruntime's quantize_dynamic on
all-MiniLM-L6-v2: about 1.5 s of one core each, and its ranking takes one build per candidate).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

from pipeline.core.limits import available_memory, usable_cores

Convert = Callable[[Path, list[str]], None]  # (target file, node names kept in float) -> writes target
MIN_PARALLEL_BYTES = 20_000_000  # below this a build takes less than starting a process
MAX_PROCESSES = 4
MEMORY_PER_BUILD = 4  # a build holds about this many copies of the model's bytes


def build_processes(model_bytes: int) -> int:
    """How many builds of a model of ``model_bytes`` to run at once: one per core (at most
    ``MAX_PROCESSES``) as memory allows, and 1 for a small model."""
    if model_bytes < MIN_PARALLEL_BYTES:
        return 1
    free = available_memory()
    by_memory = MAX_PROCESSES if free is None else free // (MEMORY_PER_BUILD * model_bytes)
    return max(1, min(usable_cores(), MAX_PROCESSES, by_memory))


def _quiet_worker() -> None:
    """A build worker drops what libraries log or warn (onnxruntime's quantizer advises pre-processing
    on every call); a build that fails raises, and the error comes back to the repair."""
    logging.getLogger().handlers[:] = [logging.NullHandler()]
    warnings.filterwarnings("ignore")


class Builds:
    """Builds of ``convert`` under ``scratch``: ``builds(kept)`` makes one; ``builds.many(kept_lists)``
    yields one per list in order, made by ``processes`` worker processes at once when more than one
    (``convert`` then crosses to those processes: a module-level function, or an instance of a module-level class).
    Use as a context manager, which stops the workers."""

    def __init__(self, convert: Convert, scratch: Path, file_name: str, processes: int = 1) -> None:
        self.convert, self.scratch, self.file_name, self.processes = convert, scratch, file_name, processes
        self.counter = itertools.count()
        self.pool: Executor | None = None

    def __enter__(self) -> Builds:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _target(self) -> Path:
        folder = self.scratch / f"attempt{next(self.counter)}"
        folder.mkdir()
        return folder / self.file_name

    def __call__(self, kept: list[str]) -> Path:
        """One build with ``kept`` in float."""
        target = self._target()
        self.convert(target, kept)
        return target

    def many(self, kept_lists: Sequence[list[str]]) -> Iterator[Path]:
        """A build per list of nodes kept in float, yielded in order as each is done."""
        if self.processes < 2 or len(kept_lists) < 2:
            yield from (self(kept) for kept in kept_lists)
            return
        if self.pool is None:  # started once it pays: a repair that passes at once starts nothing
            self.pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_quiet_worker)
        targets = [self._target() for _ in kept_lists]
        futures = [self.pool.submit(self.convert, target, kept) for target, kept in zip(targets, kept_lists,
                                                                                        strict=True)]
        for target, future in zip(targets, futures, strict=True):
            future.result()
            yield target
