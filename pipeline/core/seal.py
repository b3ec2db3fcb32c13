"""Records this tool writes and later acts on (step manifests, the reference's manifest, benchmark results,
the replay record, matrix.json) carry a seal: an HMAC-SHA256 of their content under a key that lives
outside every output folder, in the user's state folder. A record whose seal is missing or does not
check was not written by this tool for this user, or was edited since: it is treated as absent, so
what it claims (a cache hit, a measured ratio, a verdict) is computed again instead of believed.

The key is ``$MODEL_PIPELINE_SEAL_KEY`` when set (a path: give the nodes of a cluster one shared key),
else ``$XDG_STATE_HOME/model-pipeline/seal.key`` (``~/.local/state/...``); it is made on first use,
readable by its owner only. Where no key can be kept, records are written unsealed and never reused.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from pipeline.core.store import TMP_PREFIX, canonical_json, read_json, read_regular, write_json_atomic

log = logging.getLogger(__name__)

SEAL = "seal"
KEY_ENV = "MODEL_PIPELINE_SEAL_KEY"
KEY_BYTES = 32


def key_path() -> Path:
    """Where the sealing key lives."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "model-pipeline" / "seal.key"


def _read_key(path: Path) -> bytes | None:
    """The key's bytes, when ``path`` is a regular file (no link, not a device) holding one key in hex."""
    data = read_regular(path, KEY_BYTES * 2)
    try:
        key = bytes.fromhex(data.decode("ascii")) if data is not None else None
    except ValueError:
        return None
    return key if key is not None and len(key) == KEY_BYTES else None


def _make_key(path: Path) -> None:
    """Write a new random key, owner-readable only; a key another process made first wins."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, secrets.token_hex(KEY_BYTES).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails when the key exists: never replace a key records were sealed with
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@functools.cache
def _key() -> bytes | None:
    path = key_path()
    key = _read_key(path)
    if key is None and not os.path.lexists(path):
        try:
            _make_key(path)
        except OSError as exc:
            log.warning("no sealing key at %s (%s): records are written unsealed and never reused",
                        path, exc.strerror or exc)
            return None
        key = _read_key(path)
    if key is None:
        log.warning("%s is not a sealing key this tool made (a link, a folder or the wrong size): records "
                    "are written unsealed and never reused", path)
    return key


def _normal(value: Any) -> Any:
    """The value as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, default=str))


def _digest(key: bytes, value: Any) -> str:
    return hmac.new(key, canonical_json(value).encode("utf-8"), hashlib.sha256).hexdigest()


def sealed(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` with its seal added (without one when no key can be kept)."""
    body = _normal({k: v for k, v in value.items() if k != SEAL})
    key = _key()
    return body if key is None else {**body, SEAL: _digest(key, body)}


def unsealed(record: Any) -> dict[str, Any] | None:
    """The record without its seal when the seal checks, else None."""
    key = _key()
    if key is None or not isinstance(record, dict) or not isinstance(record.get(SEAL), str):
        return None
    body = {k: v for k, v in record.items() if k != SEAL}
    return body if hmac.compare_digest(record[SEAL], _digest(key, body)) else None


def write_record(path: Path, value: dict[str, Any]) -> None:
    """Write a sealed record atomically."""
    write_json_atomic(path, sealed(value))


def read_record(path: Path, what: str = "record") -> dict[str, Any] | None:
    """A sealed record's content; None (with a warning when a file is there) when it is missing, unreadable,
    not a regular file, or its seal does not check."""
    if not os.path.lexists(path):
        return None
    body = unsealed(read_json(path))
    if body is None:
        log.warning("%s: not a %s this tool sealed (edited, replaced, linked or unreadable); ignored",
                    path, what)
    return body
