"""Long-lived benchmark processes, one per target: `python -m MODULE SPEC.json` answers JSON requests.

Each target keeps its own process for the whole benchmark, so memory and thread pools never leak from
one target to the next, and the rounds can come back to it again and again without reloading it.
A request is one JSON line on the worker's stdin; the reply is one JSON line on its stdout, which the
worker keeps for replies alone (what a library prints goes to its stderr, kept in a file here).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.bench.rounds import BlockFailed, Point
from pipeline.bench.spec import WorkerSpec

WORKER_MODULE = "pipeline.bench.worker"


@dataclass
class Launch:
    """How to start one target's worker: its spec, the module to run, extra environment, the folder."""

    name: str
    spec: WorkerSpec
    module: str = WORKER_MODULE
    extra_env: Callable[[Path], dict[str, str]] | None = None  # given the worker's scratch folder
    cwd: Path | None = None
    points: frozenset[Point] | None = None  # the grid points it measures (None: every one)
    extras: bool = True  # whether it measures the per-target extras (best batch, memory, real data)


@dataclass
class Worker:
    """A running target: send it requests, read its replies, stop it."""

    launch: Launch
    timeout: float
    proc: subprocess.Popen[bytes]
    stderr: IO[bytes]
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.launch.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait (at most ``timeout`` seconds) for its reply; raises BlockFailed."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise BlockFailed(self._why_gone()) from None
        return self._reply()

    def measures(self, point: Point) -> bool:
        """Whether this target measures ``point`` of the grid."""
        return self.launch.points is None or point in self.launch.points

    def block(self, point: Point, protocol: dict[str, Any]) -> dict[str, Any]:
        """Timed calls at ``point`` with the round's ``protocol`` (the rounds' Measurer)."""
        return self.request("block", batch=point[0], seq=point[1], protocol=protocol)

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(self.timeout):
                self.proc.kill()
                raise BlockFailed(f"timed out after {self.timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise BlockFailed(self._why_gone())
        reply = json.loads(line)
        if reply.get("error"):
            raise BlockFailed(reply["error"])
        return reply

    def _why_gone(self) -> str:
        """The last line the worker wrote to stderr, or its exit status."""
        try:
            code: int | str = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = "no reply"
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {code}"

    def close(self) -> None:
        """Ask the worker to stop; kill it if it does not within 30 s."""
        self.ask_to_stop()
        self.wait_stopped()

    def ask_to_stop(self) -> None:
        """Send the worker 'quit' and close its input (it ends on either), without waiting."""
        stdin = self.proc.stdin
        if self.proc.poll() is None and stdin is not None and not stdin.closed:
            try:
                stdin.write(b'{"op": "quit"}\n')
                stdin.close()
            except OSError:
                self.proc.kill()

    def wait_stopped(self) -> None:
        """Wait for the worker to end; kill it if it has not within 30 s."""
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_all(workers: Sequence[Worker]) -> None:
    """Ask every worker to stop, then wait for each: their exits overlap (one at a time, MiniLM's ten
    took about 4 s)."""
    for worker in workers:
        worker.ask_to_stop()
    for worker in workers:
        worker.wait_stopped()


def _environment(threads: int, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", **extra}


def spawn(launch: Launch, timeout: float, scratch: Path) -> Worker:
    """Start one worker process; it says when it has loaded its target (see ``ready``)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{launch.name}-", dir=scratch))
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(launch.spec), encoding="utf-8")
    env = _environment(launch.spec["threads"], launch.extra_env(folder) if launch.extra_env else {})
    stderr = open(folder / "stderr.txt", "w+b")  # noqa: SIM115  (closed with the worker)
    proc = subprocess.Popen([sys.executable, "-m", launch.module, str(spec_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=launch.cwd)
    return Worker(launch, timeout, proc, stderr)


def ready(worker: Worker) -> Worker:
    """Wait until ``worker`` has loaded its target; raises BlockFailed (the worker stopped) when it cannot."""
    try:
        worker.ready = worker._reply()
    except BlockFailed:
        worker.close()
        worker.stderr.close()
        raise
    return worker


def start(launch: Launch, timeout: float, scratch: Path) -> Worker:
    """Start one worker and wait until it has loaded its target; raises BlockFailed when it cannot."""
    return ready(spawn(launch, timeout, scratch))


class Workers:
    """The running workers of one benchmark session, in launch order. ``restart`` replaces them with
    fresh processes, so that a point's rounds can be spread over several generations of processes
    (what one process measures also depends on where its memory landed)."""

    def __init__(self, timeout: float, failed: dict[str, str], scratch: Path, stack: ExitStack) -> None:
        self.timeout, self.failed, self.scratch, self.stack = timeout, failed, scratch, stack
        self.running: list[Worker] = []

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.running)

    def __len__(self) -> int:
        return len(self.running)

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [worker.pid for worker in self.running]

    def start(self, launches: Sequence[Launch]) -> None:
        """Start every launch at once, then wait for each to load; record in ``failed`` why one did not
        come up. Started one at a time, the ten of MiniLM's recipe took 28 s, at once about 12 s; each
        worker times its own load (``load_seconds``, which then includes the others' loads competing
        for the cores, and ``load_cpu_seconds``, which does not)."""
        spawned = [self._spawn(launch) for launch in launches]
        for launch, worker in zip(launches, spawned, strict=True):
            try:
                self.running.append(ready(worker))
            except BlockFailed as exc:
                self.failed[launch.name] = f"does not start: {exc}"

    def _spawn(self, launch: Launch) -> Worker:
        """A worker's process, stopped when the session ends whatever happens."""
        worker = spawn(launch, self.timeout, self.scratch)
        self.stack.callback(worker.stderr.close)
        self.stack.callback(worker.close)
        return worker

    def stop(self) -> None:
        """Stop every running worker."""
        stop_all(self.running)
        self.running = []

    def restart(self) -> list[Worker]:
        """Stop every worker that has not failed and start it again in a fresh process; returns them."""
        launches = [worker.launch for worker in self.running if worker.name not in self.failed]
        self.stop()
        self.start(launches)
        return self.running


@contextmanager
def started(launches: Sequence[Launch], timeout: float, failed: dict[str, str]) -> Iterator[Workers]:
    """Start every worker; yields those that came up and records why the others did not
    in ``failed``; stops them all on the way out."""
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, ExitStack() as stack:
        workers = Workers(timeout, failed, Path(scratch), stack)
        workers.start(launches)
        try:
            yield workers
        finally:
            workers.stop()
