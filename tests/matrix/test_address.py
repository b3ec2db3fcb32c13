"""--address: refused at once when malformed, within seconds when nothing answers; and the messages of
cells stripped of terminal escape codes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.core.errors import BadInputError
from pipeline.matrix import cluster
from pipeline.matrix.cell import message_of, plain
from pipeline.matrix.cluster import connected, parse_address, probe, why_lost


@pytest.mark.parametrize(("text", "expected"), [
    ("ray-head:6379", ("ray-head", 6379)), ("10.0.0.2:1", ("10.0.0.2", 1)), ("[::1]:6379", ("::1", 6379)),
    ("ray://head:10001", ("head", 10001)),
])
def test_an_address_is_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["ray-head", "ray-head:", ":6379", "head:abc", "head:0", "head:65536", "head:-1",
                                  "a b:1", "head:6379:1", "", "::1:6379", "head:1e3", "head:\x1b[31m1"])
def test_a_malformed_address_is_bad_input(text: str) -> None:
    with pytest.raises(BadInputError, match="--address") as caught:
        parse_address(text)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_port_nothing_listens_on_is_refused_before_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")

    def never(**_: Any) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", never)
    address = f"127.0.0.1:{free_port()}"
    begin = time.perf_counter()
    with pytest.raises(BadInputError, match=f"--address {address}: nothing answers"):
        with connected(address):
            pass
    assert time.perf_counter() - begin < 5


def test_the_probe_gives_up_after_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(*_: Any, **__: Any) -> socket.socket:
        time.sleep(3)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    begin = time.perf_counter()
    assert "no answer in 0.5 s" in (probe("192.0.2.1", 6379, 0.5) or "")
    assert time.perf_counter() - begin < 2


def test_a_listening_port_answers_the_probe() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert probe("127.0.0.1", server.getsockname()[1], 2) is None
    assert probe("host.invalid", 6379, 5) is not None
    assert "label" in (probe("a" * 64 + ".example", 6379, 5) or "")  # a name IDNA cannot encode


def test_the_matrix_refuses_an_unreachable_address_in_seconds(write_matrix: Callable[..., Path],
                                                              fake_cluster: list[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster, "connected", connected)  # the real one, with the fake recipe checks
    path = write_matrix()
    begin = time.perf_counter()
    assert main(["matrix", str(path), "--address", "127.0.0.1:1"]) == 2
    assert time.perf_counter() - begin < 15
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --address 127.0.0.1:1: nothing answers")


def test_a_malformed_address_is_refused_before_anything_is_written(write_matrix: Callable[..., Path],
                                                                    fake_cluster: list[str], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", str(write_matrix()), "--address", "ray-head"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --address ray-head: ") and "\n" not in err
    assert not (tmp_path / "artifacts").exists() and fake_cluster == []


@pytest.mark.slow
def test_ray_init_is_bounded_when_the_port_answers_but_is_not_ray() -> None:
    pytest.importorskip("ray")
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        begin = time.perf_counter()
        with pytest.raises(BadInputError, match=f"--address {address}: cannot connect to Ray"):
            with connected(address):
                pass
        assert time.perf_counter() - begin < 90


def test_escape_codes_are_stripped_from_messages() -> None:
    assert plain("\x1b[31mray::phase_task()\x1b[39m \x1b]8;;http://x\x07link\x1b]8;;\x07 a\rb\x07") == \
        "ray::phase_task() link ab"
    assert message_of("\x1b[1m12:00 INFO x\n\x1b[31merror: boom\x1b[0m\n", 3) == "error: boom"
    assert message_of("\x1b[2Klast\x1b[0m", 3) == "last"


def test_a_lost_task_names_its_cause_without_escape_codes() -> None:
    class TaskError(Exception):
        def __init__(self) -> None:
            super().__init__("\x1b[36mray::phase_task()\x1b[39m (pid=1, ip=10.0.0.1)\n  File ...")
            self.cause = OSError(36, "File name too long")

    assert why_lost(TaskError()) == "OSError: [Errno 36] File name too long"
    assert why_lost(RuntimeError("\x1b[31mnode died\x1b[0m\nmore")) == "node died"
    assert why_lost(RuntimeError()) == "RuntimeError"
