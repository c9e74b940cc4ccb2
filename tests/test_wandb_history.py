"""Round-trip real offline wandb runs through rlreason.wandb_history."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from rlreason.wandb_history import (
    credentials_available,
    find_wandb_file,
    read_history,
    read_run_info,
)

STEPS = 30
# Large enough that the run record spans blocks (FIRST/MIDDLE/LAST chunks) and history crosses
# a 32 KiB block boundary, so the framing is exercised, not just single-block FULL chunks.
PROMPT_TEMPLATE = "Solve step by step. " * 2500
CONFIG = {"lr": 1e-5, "model": {"name": "tiny", "layers": 2}, "prompt_template": PROMPT_TEMPLATE}


def expected_rows() -> list[dict[str, Any]]:
    return [
        {
            "loss": 1.0 / (step + 1),
            "reward/mean": step * 0.25 - 3.0,
            "eval": {"accuracy": step / STEPS},
            "sample": f"answer {step} " + "x" * 500,
            "_step": step,
        }
        for step in range(STEPS)
    ]


def log_offline_run(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(
        project="rlreason-test",
        group="grpo-gsm8k",
        tags=["offline", "unit"],
        config=CONFIG,
        dir=root,
        mode="offline",
    )
    for row in expected_rows():
        run.log({key: value for key, value in row.items() if key != "_step"})
    run.config.update({"seed": 7})
    run.summary["best_reward"] = 4.0
    run.summary["scratch"] = 1
    del run.summary["scratch"]
    run.finish()
    wandb.teardown()  # the W&B service writes the offline file asynchronously; wait until it is complete


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        log_offline_run(root, monkeypatch)
    return find_wandb_file(root)


def without_timing(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in ("_timestamp", "_runtime")}


def test_history_round_trips_every_step_and_value(run_file: Path) -> None:
    assert run_file.stat().st_size > 2 * 32 * 1024
    rows = read_history(run_file)
    assert [without_timing(row) for row in rows] == expected_rows()
    assert all(isinstance(row["_timestamp"], float) for row in rows)


def test_run_folder_and_output_folder_resolve_to_the_run_file(run_file: Path) -> None:
    run_folder = run_file.parent
    output_folder = run_folder.parent.parent
    assert find_wandb_file(run_folder) == run_file
    assert find_wandb_file(run_folder.parent) == run_file
    assert find_wandb_file(output_folder) == run_file
    assert read_history(output_folder) == read_history(run_file)


def test_run_info_has_identity_config_and_summary(run_file: Path) -> None:
    info = read_run_info(run_file)
    assert info["id"] == run_file.stem.removeprefix("run-")
    assert info["project"] == "rlreason-test"
    assert info["group"] == "grpo-gsm8k"
    assert info["tags"] == ["offline", "unit"]
    assert info["config"] == {**CONFIG, "seed": 7}
    last = expected_rows()[-1]
    assert info["summary"]["loss"] == last["loss"]
    assert info["summary"]["eval"] == last["eval"]
    assert info["summary"]["_step"] == STEPS - 1
    assert info["summary"]["best_reward"] == 4.0
    assert "scratch" not in info["summary"]


def test_truncated_file_returns_the_complete_leading_rows(run_file: Path, tmp_path: Path) -> None:
    full_rows = read_history(run_file)
    data = run_file.read_bytes()
    truncated = tmp_path / "run-cut.wandb"

    truncated.write_bytes(data[:-300])
    rows = read_history(truncated)
    assert rows == full_rows[: len(rows)]

    # Step 15's values are first written in its summary record, just before its history record.
    truncated.write_bytes(data[: data.index(b"answer 15 ")])
    assert read_history(truncated) == full_rows[:15]

    row_counts = []
    for cut in range(0, len(data), 1009):
        truncated.write_bytes(data[:cut])
        rows = read_history(truncated)
        assert rows == full_rows[: len(rows)]
        row_counts.append(len(rows))
    assert row_counts == sorted(row_counts)


def test_corrupt_byte_ends_reading_at_the_damaged_record(run_file: Path, tmp_path: Path) -> None:
    full_rows = read_history(run_file)
    data = bytearray(run_file.read_bytes())
    data[data.index(b"answer 15 ")] ^= 0xFF
    corrupt = tmp_path / "run-corrupt.wandb"
    corrupt.write_bytes(bytes(data))
    assert read_history(corrupt) == full_rows[:15]


def frame_like_wandb(payloads: list[bytes]) -> bytes:
    """LevelDB-log framing as wandb-core writes it, for layouts a real run only hits by chance."""
    block_size, chunk_header_size = 32 * 1024, 7
    data = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for payload in payloads:
        is_first = True
        while True:
            block_left = block_size - len(data) % block_size
            if block_left < chunk_header_size:
                data += bytes(block_left)
                continue
            room = block_left - chunk_header_size
            chunk, payload = payload[:room], payload[room:]
            is_last = not payload
            chunk_type = 1 if is_first and is_last else 2 if is_first else 4 if is_last else 3
            checksum = zlib.crc32(bytes([chunk_type]) + chunk)
            data += struct.pack("<IHB", checksum, len(chunk), chunk_type) + chunk
            is_first = False
            if is_last:
                break
    return bytes(data)


def history_payload(step: int, text: str) -> bytes:
    record = wandb_internal_pb2.Record()
    for key, value in (("text", text), ("_step", step)):
        record.history.item.add(nested_key=[key], value_json=json.dumps(value))
    return record.SerializeToString()


def test_zero_padding_at_block_end_is_skipped(tmp_path: Path) -> None:
    # The first record ends 3 bytes short of the 32 KiB block: too few for a chunk header, so the
    # writer pads with zeros and the next record starts in the next block.
    payload_size = 32 * 1024 - 3 - 7 - 7
    text = "x" * payload_size
    while len(first := history_payload(0, text)) != payload_size:
        text = text[: len(text) - (len(first) - payload_size)]
    run_path = tmp_path / "run-padded.wandb"
    run_path.write_bytes(frame_like_wandb([first, history_payload(1, "after padding")]))
    assert read_history(run_path) == [
        {"text": text, "_step": 0},
        {"text": "after padding", "_step": 1},
    ]


def test_newest_run_is_picked(tmp_path: Path) -> None:
    # Names sort the other way round, so only the modification time can pick the right one.
    older = tmp_path / "wandb" / "offline-run-20250101_000000-bbbb" / "run-bbbb.wandb"
    newer = tmp_path / "wandb" / "offline-run-20250101_000000-aaaa" / "run-aaaa.wandb"
    for run_path, mtime in ((older, 1_000_000), (newer, 2_000_000)):
        run_path.parent.mkdir(parents=True)
        run_path.write_bytes(b"")
        os.utime(run_path, (mtime, mtime))
    assert find_wandb_file(tmp_path) == newer.resolve()


def test_missing_run_raises_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_wandb_file(tmp_path)
    not_a_run = tmp_path / "debug.log"
    not_a_run.write_text("wandb: starting run\n")
    with pytest.raises(ValueError, match="not a wandb run file"):
        read_history(not_a_run)


@pytest.fixture
def clean_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_netrc(path: Path, machine: str) -> None:
    path.write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    path.chmod(0o600)


def test_no_credentials(clean_credentials: Path) -> None:
    assert not credentials_available()


def test_api_key_env_counts(clean_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert credentials_available()


def test_home_netrc_counts_only_for_the_wandb_host(clean_credentials: Path) -> None:
    netrc_path = clean_credentials / ".netrc"
    write_netrc(netrc_path, "github.com")
    assert not credentials_available()
    write_netrc(netrc_path, "api.wandb.ai")
    assert credentials_available()


def test_netrc_env_and_base_url(clean_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc_path = clean_credentials / "elsewhere" / "netrc"
    netrc_path.parent.mkdir()
    write_netrc(netrc_path, "wandb.example.com")
    monkeypatch.setenv("NETRC", str(netrc_path))
    assert not credentials_available()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert credentials_available()


def test_unparsable_netrc_is_no_credentials(clean_credentials: Path) -> None:
    (clean_credentials / ".netrc").write_text("machine api.wandb.ai login\n")
    assert not credentials_available()
