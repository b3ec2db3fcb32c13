"""The matrix on Ray: every cell's phases as Ray tasks, and the resource that keeps benchmarks true.

Each node offers one unit of the custom resource ``pipeline_node``. A build takes a hundredth of it, a
benchmark all of it, pinned to the node that built the cell (its artifacts are on that node's disk):
so no two benchmarks run at once on a node, and no build runs beside one. Builds are submitted only
as the cluster has CPUs for them, and none while a benchmark waits for its node or runs, so a stream
of builds cannot starve a benchmark (on a cluster of many nodes this also holds back builds
elsewhere: simple, and never wrong). Ray runs a task again when its worker process or its node is
lost (``max_retries``); a benchmark whose node is gone is built again elsewhere.

An ``--address`` is ``HOST:PORT`` (or ``ray://HOST:PORT``); before Ray connects, something must accept a
TCP connection there within PROBE_SECONDS, and Ray then tries once (about 40 s at most) instead of its
twenty tries.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import BadInputError, first_line
from pipeline.matrix.cell import Phase, PhaseResult, plain, run_phase
from pipeline.matrix.paths import cell_folder, log_folder
from pipeline.matrix.spec import Cell, Resources

NODE_RESOURCE = "pipeline_node"
BUILD_SHARE = 0.01
BOARD_NAME = "pipeline-matrix-board"
NAMESPACE = "pipeline-matrix"
POLL_SECONDS = 0.5
LOCAL_OBJECT_STORE_BYTES = 128 << 20  # the tasks pass small JSON results only
PROBE_SECONDS = 10.0  # how long the address has to accept a TCP connection
# Ray's own budget, in tries of about 40 s each, for reaching the cluster's GCS when ray.init connects
RAY_CONNECT_TRIES_ENV, RAY_CONNECT_TRIES = "RAY_gcs_server_port_wait_time_s", "1"
ADDRESS_RE = re.compile(r"^(?:ray://)?(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``ray://HOST:PORT`` as (host, port); anything else is bad input."""
    found = ADDRESS_RE.match(text)
    port = int(found["port"]) if found else 0
    if found is None or not 0 < port < 65536:
        raise BadInputError(f"--address {plain(text)}: give HOST:PORT, the Ray head's address (e.g. ray-head:6379), "
                            "with a port from 1 to 65535")
    return found["ipv6"] or found["host"], port


def probe(host: str, port: int, seconds: float = PROBE_SECONDS) -> str | None:
    """None when something at ``host``:``port`` accepts a TCP connection within ``seconds`` (name lookup
    included), else why not."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=seconds):
                outcome.append(None)
        except (OSError, ValueError) as exc:  # ValueError: a host name IDNA cannot encode
            outcome.append(getattr(exc, "strerror", None) or first_line(exc))

    thread = threading.Thread(target=connect, name="matrix-address-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else f"no answer in {seconds:g} s"


def why_lost(exc: BaseException) -> str:
    """One plain line on why a task failed: the exception the task raised when Ray carries it, else the
    first line of Ray's own message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return plain(f"{type(cause).__name__}: {first_line(cause)}").strip()
    return plain(first_line(exc)).strip() or type(exc).__name__


class Board:
    """A Ray actor the tasks tell when they start, so the driver can show what runs where (and a test
    can find the process of a running cell)."""

    def __init__(self) -> None:
        self.running: dict[str, dict[str, Any]] = {}

    def started(self, cell: str, phase: str, node: str, pid: int) -> None:
        self.running[cell] = {"phase": phase, "node": node, "pid": pid, "since": time.time()}

    def finished(self, cell: str) -> None:
        self.running.pop(cell, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.running)


def phase_task(cell: dict[str, Any], phase: Phase, out: str, root: str, timeout: float, log_dir: str,
               board: Any) -> dict[str, Any]:
    """The body of a Ray task: run one phase of a cell on this node, telling the board."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    board.started.remote(cell["name"], phase, node, os.getpid())
    try:
        result = run_phase(cell, phase, Path(out), Path(root), node, timeout, Path(log_dir))
    finally:
        board.finished.remote(cell["name"])
    return result.as_json()


@dataclass
class Cluster:
    """A connected Ray instance: where it is, and what its nodes offer."""

    address: str
    nodes: list[dict[str, Any]]
    board: Any
    local: bool

    @property
    def max_node_cpus(self) -> float:
        return max(node["Resources"].get("CPU", 0) for node in self.nodes)

    def build_slots(self, build_cpus: float) -> int:
        """How many builds of ``build_cpus`` CPUs the cluster runs at once."""
        return max(1, sum(int(node["Resources"].get("CPU", 0) // build_cpus) for node in self.nodes))


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` meanwhile, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _check_reachable(address: str) -> None:
    """Refuse (exit 2) an address that is malformed, or where nothing accepts a TCP connection."""
    host, port = parse_address(address)
    why = probe(host, port)
    if why is not None:
        raise BadInputError(f"--address {address}: nothing answers at {host}:{port} ({why}); is the Ray head "
                            "running there, and is this its GCS port (6379 by default)?")


def _init(ray: Any, kwargs: dict[str, Any], address: str | None) -> Any:
    """ray.init, its failure to connect as bad input; at an address, with Ray trying once."""
    if address is None:
        try:
            return ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BadInputError(f"cannot start a local Ray instance ({plain(first_line(exc))})") from None
    try:
        with _env(RAY_CONNECT_TRIES_ENV, RAY_CONNECT_TRIES):
            return ray.init(**kwargs)
    except Exception as exc:  # whatever Ray raises when it cannot join the cluster at the address
        raise BadInputError(f"--address {address}: cannot connect to Ray ({plain(first_line(exc))})") from None


@contextmanager
def connected(address: str | None, num_cpus: int | None = None) -> Iterator[Cluster]:
    """Connect to the Ray cluster at ``address`` (probed first), or start a local instance with this
    machine's cores (``num_cpus`` to use fewer) and one unit of the node resource; refuse a cluster whose
    nodes do not offer it."""
    if address is not None:
        _check_reachable(address)
    import ray

    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, resources={NODE_RESOURCE: 1},
                      object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    else:
        kwargs["address"] = address
    context = _init(ray, kwargs, address)
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if not any(node["Resources"].get(NODE_RESOURCE) for node in nodes):
            raise BadInputError(f"--address {address}: no node offers the resource {NODE_RESOURCE!r}; start each "
                                f"node with: ray start ... --resources='{{\"{NODE_RESOURCE}\": 1}}'")
        board = ray.remote(num_cpus=0)(Board).options(name=f"{BOARD_NAME}-{uuid.uuid4().hex[:8]}").remote()
        yield Cluster(getattr(context, "address_info", {}).get("address", address or "local"), nodes, board,
                      address is None)
    finally:
        ray.shutdown()


@dataclass
class Schedule:
    """The cells still to run and the phases in flight."""

    queue: list[Cell]
    in_flight: dict[Any, tuple[Cell, Phase]] = field(default_factory=dict)  # ObjectRef -> what it runs
    attempts: dict[str, int] = field(default_factory=dict)  # cell -> times it was started from its build

    def bench_waiting(self) -> bool:
        return any(phase == "bench" for _, phase in self.in_flight.values())

    def builds(self) -> int:
        return sum(phase == "build" for _, phase in self.in_flight.values())


def run_cells(cluster: Cluster, cells: list[Cell], wants_bench: Callable[[Cell], bool], folder: Path, root: Path,
              resources: Resources, on_change: Callable[[dict[str, dict[str, Any]]], None],
              on_result: Callable[[PhaseResult], None]) -> None:
    """Run every cell's build, then (where it shipped and its recipe benchmarks) its benchmark on the
    same node holding the whole node; every finished phase goes to ``on_result``, and what runs to
    ``on_change`` (about twice a second)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if resources.build_cpus > cluster.max_node_cpus:
        raise BadInputError(f"resources.build_cpus: {resources.build_cpus:g} is more than any node has "
                            f"({cluster.max_node_cpus:g} CPUs)")
    task = ray.remote(phase_task)
    schedule = Schedule(list(cells))
    logs = str(log_folder(folder))

    def submit(cell: Cell, phase: Phase, node: str = "") -> None:
        out = str(cell_folder(folder, cell.name))
        if phase == "build":
            options: dict[str, Any] = {"num_cpus": resources.build_cpus, "resources": {NODE_RESOURCE: BUILD_SHARE}}
        else:
            options = {"num_cpus": 1, "resources": {NODE_RESOURCE: 1},
                       "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}
        ref = task.options(max_retries=resources.max_retries, retry_exceptions=False, **options).remote(
            cell.as_json(), phase, out, str(root), resources.timeout_seconds, logs, cluster.board)
        schedule.in_flight[ref] = (cell, phase)

    def lost(cell: Cell, phase: Phase, exc: Exception) -> None:
        schedule.attempts[cell.name] = schedule.attempts.get(cell.name, 1) + 1
        why = why_lost(exc)
        if phase == "bench" and schedule.attempts[cell.name] <= resources.max_retries + 1:
            schedule.queue.append(cell)  # its node is gone, and its artifacts with it: build it again
            return
        now = time.time()
        on_result(PhaseResult(cell.name, phase, 3, f"error: {phase} lost: {why}", "", 0, now, now))

    slots = cluster.build_slots(resources.build_cpus)
    while schedule.queue or schedule.in_flight:
        while schedule.queue and not schedule.bench_waiting() and schedule.builds() < slots:
            submit(schedule.queue.pop(0), "build")
        ready, _ = ray.wait(list(schedule.in_flight), num_returns=1, timeout=POLL_SECONDS)
        on_change(ray.get(cluster.board.snapshot.remote()))
        for ref in ready:
            cell, phase = schedule.in_flight.pop(ref)
            try:
                result = PhaseResult(**ray.get(ref))
            except ray.exceptions.RayError as exc:
                lost(cell, phase, exc)
                continue
            on_result(result)
            if phase == "build" and result.exit_code == 0 and wants_bench(cell):
                submit(cell, "bench", result.node)
