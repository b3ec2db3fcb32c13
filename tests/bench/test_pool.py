"""The long-lived benchmark worker and its client: requests and replies, a failed request, a worker
that prints to stdout, one that cannot load, and one that hangs."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.pool import Launch, start, started
from pipeline.bench.rounds import BlockFailed
from pipeline.bench.worker import serve
from pipeline.runtime.timing import Timer

PROTOCOL = {"warmup": 1, "warmup_seconds": 0.0, "min_repeats": 4, "min_seconds": 0.0, "max_seconds": 1.0,
            "throughput_seconds": 0.0, "cv_threshold": 0.1}
SPEC = {"target": "fake", "format": "onnx", "threads": 1, "device": "cpu", "input_names": ["input_ids"],
        "vocab_size": 100, "protocol": PROTOCOL}


class FakeBackend:
    """Counts its calls; fails on batch 3."""

    def __init__(self) -> None:
        self.timer, self.sync, self.calls = Timer(), (lambda: None), 0

    def stage(self, inputs: dict[str, Any]) -> Any:
        if inputs["input_ids"].shape[0] == 3:
            raise RuntimeError("out of memory at batch 3")

        def call() -> None:
            self.calls += 1

        return call


def test_serve_answers_blocks_goes_on_after_an_error_and_stops_on_quit() -> None:
    requests = io.StringIO("\n".join(json.dumps(r) for r in [
        {"op": "block", "batch": 1, "seq": 8, "protocol": PROTOCOL},
        {"op": "block", "batch": 3, "seq": 8, "protocol": PROTOCOL},
        {"op": "nonsense"},
        {"op": "block", "batch": 1, "seq": 8, "protocol": {**PROTOCOL, "throughput_seconds": 0.01}},
        {"op": "quit"},
        {"op": "block", "batch": 1, "seq": 8, "protocol": PROTOCOL}]) + "\n")
    replies, backend = io.StringIO(), FakeBackend()
    assert serve(SPEC, requests, replies, target_backend=lambda spec: backend) == 0
    ready, first, failed, unknown, second = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert ready["ready"] and ready["fingerprint"]["threads"] == 1
    assert len(first["latencies_ms"]) == 4 and "throughput_calls" not in first
    assert failed == {"error": "RuntimeError: out of memory at batch 3"} and "unknown request" in unknown["error"]
    assert len(second["latencies_ms"]) == 4 and second["throughput_calls"] >= 3


def test_a_target_that_does_not_load_says_why() -> None:
    replies = io.StringIO()

    def broken(spec: dict[str, Any]) -> Any:
        raise FileNotFoundError("model.onnx is gone")

    assert serve(SPEC, io.StringIO(""), replies, target_backend=broken) == 1
    assert json.loads(replies.getvalue()) == {"error": "FileNotFoundError: model.onnx is gone"}


WORKER = '''
import sys, time
from pipeline.bench import worker as bench_worker
from tests.bench.test_pool import FakeBackend

def noisy(spec):
    print("a library that prints to stdout")  # must not land in the replies
    if spec["target"] == "hangs":
        time.sleep(60)
    return FakeBackend()

sys.exit(bench_worker.main(sys.argv[1:], noisy))
'''


@pytest.fixture
def worker_module(tmp_path: Path) -> Launch:
    (tmp_path / "noisy_worker.py").write_text(textwrap.dedent(WORKER))
    root = Path(__file__).resolve().parents[2]
    return Launch("noisy", dict(SPEC), module="noisy_worker",
                  extra_env=lambda _: {"PYTHONPATH": f"{tmp_path}:{root}"}, cwd=tmp_path)


def test_a_worker_process_keeps_its_replies_clean_of_what_libraries_print(worker_module: Launch,
                                                                          tmp_path: Path) -> None:
    failed: dict[str, str] = {}
    with started([worker_module], timeout=60, failed=failed) as workers:
        (worker,) = workers
        assert worker.ready["ready"] and worker.ready["load_seconds"] >= 0
        assert len(worker.block((1, 8), PROTOCOL)["latencies_ms"]) == 4
        with pytest.raises(BlockFailed, match="out of memory at batch 3"):
            worker.block((3, 8), PROTOCOL)
        assert len(worker.block((2, 8), PROTOCOL)["latencies_ms"]) == 4  # still serving
        pid = worker.pid
    assert failed == {} and worker.proc.poll() is not None and pid > 0


def test_a_worker_that_hangs_is_killed_at_its_timeout(worker_module: Launch, tmp_path: Path) -> None:
    hanging = Launch("hangs", {**worker_module.spec, "target": "hangs"}, worker_module.module,
                     worker_module.extra_env, worker_module.cwd)
    with pytest.raises(BlockFailed, match="timed out after 2 s"):
        start(hanging, timeout=2, scratch=tmp_path)
    failed: dict[str, str] = {}
    with started([hanging, worker_module], timeout=2, failed=failed) as workers:
        assert [w.name for w in workers] == ["noisy"]
    assert failed == {"hangs": "does not start: timed out after 2 s"}



def test_a_restart_starts_every_worker_again_in_a_fresh_process(worker_module: Launch) -> None:
    failed: dict[str, str] = {}
    with started([worker_module], timeout=60, failed=failed) as workers:
        (before,) = workers
        (after,) = workers.restart()
        assert before.proc.poll() is not None and after.pid != before.pid and workers.pids() == [after.pid]
        assert len(after.block((1, 8), PROTOCOL)["latencies_ms"]) == 4
    assert after.proc.poll() is not None
