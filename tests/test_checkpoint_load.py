"""A trainer state saved from a GPU loads onto the CPU (then moves with the parameters)."""

import zipfile
from pathlib import Path

import torch

from rlreason.checkpoint import STATE_FILE, load_trainer_state


def _retag_storages(path: Path, old: str, new: str) -> None:
    """Rewrite the storages' location tags in a torch.save file, as if saved from device ``new``."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    tag = lambda s: b"X" + len(s).to_bytes(4, "little") + s.encode()  # pickle protocol 2's BINUNICODE
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as dst:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert tag(old) in data
                data = data.replace(tag(old), tag(new))
            dst.writestr(info, data)


def test_state_saved_on_cuda_loads_on_cpu(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"step": 7, "optimizer": optimizer.state_dict()}
    torch.save(state, tmp_path / STATE_FILE)
    _retag_storages(tmp_path / STATE_FILE, "cpu", "cuda:0")

    loaded = load_trainer_state(tmp_path)
    moments = loaded["optimizer"]["state"][0]
    assert moments["exp_avg"].device.type == "cpu"
    torch.testing.assert_close(moments["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(loaded["optimizer"])  # moves to the parameters' device
    assert loaded["step"] == 7
