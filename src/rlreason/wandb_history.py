"""Read the metrics of an offline wandb run back from its ``run-<id>.wandb`` file, without network.

Since wandb-core, an offline run leaves no ``wandb-history.jsonl``: everything it logged is in
one binary file, a LevelDB-log stream of protobuf ``Record`` messages. Tests and analysis scripts
read it here to check what a run logged without syncing it to a server.

Layout of the file (wandb 0.31): a 7-byte header (``:W&B``, magic ``0xBEE1`` little-endian, version
byte), then records framed in 32 KiB blocks counted from the start of the file, header included.
Each chunk has a 7-byte header: checksum (uint32 LE), length (uint16 LE), type (FULL, FIRST, MIDDLE,
LAST). The checksum is zlib's CRC-32 of the type byte and the payload, not LevelDB's masked CRC-32C.
"""

from __future__ import annotations

import json
import netrc
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wandb.proto import wandb_internal_pb2

_FILE_HEADER = struct.Struct("<4sHB")
_FILE_IDENT = b":W&B"
_FILE_MAGIC = 0xBEE1
_FILE_VERSION = 0
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK_SIZE = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_WANDB_INTERNAL_KEY = "_wandb"
_DEFAULT_BASE_URL = "https://api.wandb.ai"


def find_wandb_file(path: str | os.PathLike[str]) -> Path:
    """Resolve a .wandb file, a run folder, or a folder holding ``wandb/`` to one run file.

    Callers usually know the output folder of a training run, not the generated run id, so the
    newest run file (by modification time) under the usual layouts is taken.
    """
    path = Path(path)
    if path.is_file():
        return path
    candidates = {
        candidate.resolve()
        for pattern in ("run-*.wandb", "*/run-*.wandb", "wandb/*/run-*.wandb")
        for candidate in path.glob(pattern)
    }
    if not candidates:
        raise FileNotFoundError(
            f"no wandb run file (run-<id>.wandb) found at {path}: pass the .wandb file, "
            "a run folder (wandb/offline-run-*/) or a folder that contains wandb/"
        )
    return max(candidates, key=lambda candidate: (candidate.stat().st_mtime_ns, str(candidate)))


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One dict per logged step, in file order, with the keys as logged (``_step`` included).

    Nested dicts passed to ``run.log`` come back nested, as wandb stores them as key paths;
    a key like ``reward/mean`` is a single key. Values are JSON-decoded (NaN and Infinity too).
    """
    rows: list[dict[str, Any]] = []
    for record in _read_records(find_wandb_file(path)):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            _apply_updates(row, record.history.item)
            rows.append(row)
    return rows


def read_run_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity, config and final summary of a run, so a result can be traced to its settings.

    Keys: id, project, name, group, tags, config, summary. Config and summary replay every update
    and removal in the file; wandb's own ``_wandb`` bookkeeping entry is left out of both.
    """
    info: dict[str, Any] = {"id": "", "project": "", "name": "", "group": "", "tags": []}
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for record in _read_records(find_wandb_file(path)):
        record_type = record.WhichOneof("record_type")
        if record_type == "run":
            run = record.run
            info.update(
                id=run.run_id,
                project=run.project,
                name=run.display_name,
                group=run.run_group,
                tags=list(run.tags),
            )
            _apply_updates(config, run.config.update)
            _apply_removals(config, run.config.remove)
        elif record_type == "config":
            _apply_updates(config, record.config.update)
            _apply_removals(config, record.config.remove)
        elif record_type == "summary":
            _apply_updates(summary, record.summary.update)
            _apply_removals(summary, record.summary.remove)
    config.pop(_WANDB_INTERNAL_KEY, None)
    summary.pop(_WANDB_INTERNAL_KEY, None)
    return {**info, "config": config, "summary": summary}


def credentials_available() -> bool:
    """Whether wandb could log in online without asking; decides between online and offline mode.

    Checks WANDB_API_KEY, then a password for the server's host (WANDB_BASE_URL, default
    api.wandb.ai) in $NETRC or ~/.netrc, as wandb itself does. Never prompts, never connects.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or _DEFAULT_BASE_URL).netloc
    try:
        entry = netrc.netrc(netrc_path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return entry is not None and bool(entry[2])


def _read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    for payload in _iter_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _iter_payloads(path: Path) -> Iterator[bytes]:
    """Yield each complete record payload; stop quietly at a cut-off or corrupt chunk.

    A run killed mid-write leaves a torn last record, and everything before it is still valid,
    so the checksum is verified and reading ends at the first chunk that fails it.
    """
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size:
        return  # created by a run that has not written its header yet
    ident, magic, version = _FILE_HEADER.unpack_from(data)
    if ident != _FILE_IDENT or magic != _FILE_MAGIC:
        raise ValueError(f"{path} is not a wandb run file (no :W&B header)")
    if version != _FILE_VERSION:
        raise ValueError(
            f"{path} is wandb file format {version}; this reader knows {_FILE_VERSION}"
        )
    position = _FILE_HEADER.size
    pending: bytearray | None = None
    while True:
        block_left = _BLOCK_SIZE - position % _BLOCK_SIZE
        if block_left < _CHUNK_HEADER.size:
            position += block_left  # zero padding: a chunk header never straddles blocks
            continue
        if position + _CHUNK_HEADER.size > len(data):
            return
        checksum, length, chunk_type = _CHUNK_HEADER.unpack_from(data, position)
        start = position + _CHUNK_HEADER.size
        chunk = data[start : start + length]
        if zlib.crc32(bytes([chunk_type]) + chunk) != checksum:
            return  # also the case for a chunk cut short by the end of the file
        position = start + length
        if chunk_type == _FULL:
            yield chunk
        elif chunk_type == _FIRST:
            pending = bytearray(chunk)
        elif chunk_type in (_MIDDLE, _LAST) and pending is not None:
            pending += chunk
            if chunk_type == _LAST:
                yield bytes(pending)
                pending = None
        else:
            return  # a continuation without its start, or an unknown type: corrupt from here


def _key_path(item: Any) -> list[str]:
    """Items name their key as a path (``nested_key``) or a single ``key``; wandb-core uses both."""
    return list(item.nested_key) or [item.key]


def _apply_updates(target: dict[str, Any], items: Iterable[Any]) -> None:
    for item in items:
        *parents, leaf = _key_path(item)
        node = target
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(item.value_json)


def _apply_removals(target: dict[str, Any], items: Iterable[Any]) -> None:
    for item in items:
        *parents, leaf = _key_path(item)
        node = target
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
