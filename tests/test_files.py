"""Atomic writes (`rglcd.files`): the target is whole or untouched, no temporary file is left, JSON and metrics in
the trainers' format."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from rglcd.files import METRICS_FILE, atomic_path, write_atomic, write_json, write_metrics


def test_text_bytes_and_json_land_whole_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "new" / "folder" / "a.txt"
    assert write_atomic(target, "héllo\n") == target and target.read_text(encoding="utf-8") == "héllo\n"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_json(tmp_path / "b.json", {"x": [1, 2]}, sort_keys=True)
    assert (tmp_path / "b.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "b.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "cache.pt"
    torch.save({"v": 1}, target)
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("interrupted")
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"]
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".cache.pt.") and not tmp.exists()
        torch.save({"v": 2}, tmp)
    assert torch.load(target, weights_only=True) == {"v": 2}


def test_writers_in_several_threads_each_use_their_own_temporary_file(tmp_path):
    target = tmp_path / "family.json"
    values = [{"writer": i, "members": list(range(200))} for i in range(8)]
    threads = [threading.Thread(target=write_json, args=(target, v)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(target.read_text()) in values
    assert [p.name for p in tmp_path.iterdir()] == ["family.json"]


def test_metrics_are_written_as_the_trainers_wrote_them(tmp_path):
    metrics = {"loss": 0.25, "steps": 10, "name": "lcm"}
    path = write_metrics(tmp_path / "export", metrics)
    assert path == tmp_path / "export" / METRICS_FILE
    assert path.read_text() == json.dumps(metrics, indent=2) + "\n"
