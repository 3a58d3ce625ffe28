"""The streaming data pipeline (rglcd.data.stream on webdataset): each sample once per epoch across ranks and
workers, resampled streams seeded per rank and resume, resume without re-decoding, bad data skipped or one clear error.
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import rglcd.data.stream as stream
from rglcd.data.shards import DataError, ImageFolderTable
from rglcd.data.stream import ShardStream, SkippedDataWarning, StreamOptions, TableStream
from tests.test_shards import png_bytes, write_shard

ROOT = Path(__file__).resolve().parents[1]


def jpeg_bytes(w, h, colour):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(root, shards=4, per_shard=5):
    """`shards` tar shards of `per_shard` samples each, alternately JPEG and PNG; the caption names the sample."""
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            ext, encode = ("jpg", jpeg_bytes) if i % 2 else ("png", png_bytes)
            samples.append((f"s{s}-{i}", {ext: encode(12 + i, 10, (40 * s, 0, 9 * i)), "txt": f"s{s}-{i}".encode()}))
        write_shard(root / f"{s:05d}.tar", samples)
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")


def one_epoch(pattern, rank, world, workers, buffer=4):
    """The captions one rank reads in one epoch (its DataLoader with `workers` workers)."""
    options = StreamOptions("epoch", buffer, workers, 0)
    return [c for _, c in ShardStream(pattern, 8, rank, world, options).one_pass(3)]


def test_shards_yield_images_and_captions_in_laion_layout(tmp_path):
    write_shard(tmp_path / "00000.tar", [
        ("a", {"jpg": png_bytes(40, 20, (255, 0, 0)), "txt": b"a red box"}),
        ("b", {"png": png_bytes(16, 16, (0, 0, 255)), "json": json.dumps({"caption": "blue"}).encode()}),
    ])
    write_shard(tmp_path / "00001.tar", [("d", {"webp": png_bytes(8, 8, (0, 255, 0)), "txt": b"tiny green"})])
    out = list(ShardStream(str(tmp_path / "{00000..00001}.tar"), 16, options=StreamOptions("epoch", 0, 0)).one_pass())
    assert sorted(c for _, c in out) == ["a red box", "blue", "tiny green"]
    assert all(img.shape == (3, 16, 16) and img.dtype == torch.float32 for img, _ in out)
    red = next(img for img, c in out if c == "a red box")
    assert red[0].mean() > 0.9 and red[2].mean() < -0.9


def test_one_epoch_of_four_shards_on_two_ranks_of_two_workers_is_each_sample_once_distributed(tmp_path):
    """Ranks simulated in one process (each its own DataLoader with 2 worker processes)."""
    pattern = write_shards(tmp_path)
    seen = [one_epoch(pattern, rank, 2, workers=2) for rank in (0, 1)]
    assert sorted(seen[0] + seen[1]) == sorted(f"s{s}-{i}" for s in range(4) for i in range(5))
    assert len(seen[0]) == len(seen[1]) == 10  # two whole shards each
    assert {c.split("-")[0] for c in seen[0]}.isdisjoint({c.split("-")[0] for c in seen[1]})


RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
from rglcd.data.stream import ShardStream, StreamOptions
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
s = ShardStream(sys.argv[1], 8, rank, world, StreamOptions("epoch", 4, 2, 0))
seen = [c for _, c in s.take(7)]
state = s.state_dict()  # a collective: every rank's entry
seen += [c for _, c in s.take(3)]
json.dump({"seen": seen, "state": state}, open(f"{sys.argv[2]}/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


def test_two_processes_of_two_workers_read_each_sample_once_multiprocess_distributed(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): each rank reads its 10 samples of one epoch with 2 DataLoader workers and
    writes what it saw; the state each rank returns holds both ranks' positions (only rank 0's is saved)."""
    pattern = write_shards(tmp_path)
    (tmp_path / "read.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "read.py"), pattern, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = [o["seen"] for o in out]
    assert sorted(seen[0] + seen[1]) == sorted(f"s{s}-{i}" for s in range(4) for i in range(5))
    state = out[1]["state"]
    assert set(state["ranks"]) == {"0", "1"} and state["consumed"] == 7
    assert all(len(state["ranks"][r]["done"]) == 2 for r in "01")  # 7 samples: both of each rank's shards started


def test_resume_skips_the_started_shards_and_decodes_no_consumed_sample(tmp_path, monkeypatch):
    pattern = write_shards(tmp_path, shards=4, per_shard=4)
    options = StreamOptions("epoch", 0, 0, 0)
    first = ShardStream(pattern, 8, options=options)
    consumed = [c for _, c in first.take(6)]  # one shard whole, 2 samples of a second
    state = first.state_dict()
    assert state["ranks"]["0"]["epoch"] == 0 and len(state["ranks"]["0"]["done"]) == 2
    decoded = []
    real = stream.decode_record
    monkeypatch.setattr(stream, "decode_record", lambda rec, *a: decoded.append(rec["__key__"]) or real(rec, *a))
    resumed = ShardStream(pattern, 8, options=options)
    resumed.load_state_dict(state)
    rest = [c for _, c in resumed.take(8)]  # the epoch's two untouched shards
    assert decoded == rest and not set(rest) & set(consumed)
    assert {c.split("-")[0] for c in rest}.isdisjoint({c.split("-")[0] for c in consumed})
    nxt = [c for _, c in resumed.take(16)]  # then every sample of the next epoch
    assert sorted(nxt) == sorted(f"s{s}-{i}" for s in range(4) for i in range(4))
    assert resumed.state_dict()["ranks"]["0"]["epoch"] == 1


def test_resampled_stream_is_reproducible_per_seed_differs_across_ranks_and_resumes_without_decoding(tmp_path,
                                                                                                    monkeypatch):
    pattern = write_shards(tmp_path, shards=4, per_shard=5)

    def draw(rank=0, seed=0, n=15, state=None, workers=0, buffer=0):
        s = ShardStream(pattern, 8, rank, 2, StreamOptions("resampled", buffer, workers, seed))
        if state is not None:
            s.load_state_dict(state)
        return [c for _, c in s.take(n)], s

    base, stream0 = draw()  # no shuffle buffer: three whole shards in the order drawn
    assert draw(workers=1)[0] == base and draw()[0] == base
    assert draw(rank=1)[0] != base and draw(seed=1)[0] != base
    assert len({c.split("-")[0] for c in base}) > 1
    shuffled = draw(buffer=8)[0]
    assert shuffled == draw(buffer=8)[0] and any(a.split("-")[0] != b.split("-")[0]
                                                 for a, b in zip(shuffled[:5], shuffled[1:5]))
    state = stream0.state_dict()
    decoded = []
    real = stream.decode_record
    monkeypatch.setattr(stream, "decode_record", lambda rec, *a: decoded.append(rec["__key__"]) or real(rec, *a))
    again, _ = draw(n=4, state=state)
    assert again == draw(n=4, state=state)[0] != base[:4]  # a fresh draw seeded by the resume position
    assert len(decoded) == 2 * 4  # each resumed stream decodes what it yields, none of the 15 consumed again


def bad_shards(root):
    write_shard(root / "00000.tar", [
        ("ok0", {"jpg": jpeg_bytes(12, 10, (9, 9, 9)), "txt": b"ok0"}),
        ("garbled", {"jpg": b"\xff\xd8 not a jpeg", "txt": b"garbled"}),
        ("mute", {"jpg": jpeg_bytes(12, 10, (9, 9, 9))}),
        ("ok1", {"png": png_bytes(12, 10, (9, 9, 9)), "txt": b"ok1"}),
    ])
    write_shard(root / "00001.tar", [(f"t{i}", {"png": png_bytes(64, 64, (i, 0, 0)), "txt": f"t{i}".encode()})
                                     for i in range(4)])
    with tarfile.open(root / "00001.tar") as tar:
        cut = next(m.offset_data + m.size // 2 for m in tar if m.name == "t2.png")
    (root / "00001.tar").write_bytes((root / "00001.tar").read_bytes()[:cut])  # cut inside t2's image


def test_bad_samples_and_a_truncated_tar_are_skipped_with_counts_and_warnings(tmp_path):
    bad_shards(tmp_path)
    s = ShardStream(str(tmp_path / "*.tar"), 8, options=StreamOptions("epoch", 0, 0, 0))
    with pytest.warns(SkippedDataWarning) as caught:
        got = [c for _, c in s.one_pass()]
    assert {"ok0", "ok1"} <= set(got) and not {"garbled", "mute"} & set(got)
    assert s.skipped["undecodable image"] >= 1 and s.skipped["no caption"] >= 1  # mute, and the truncated tail
    assert s.skipped["unreadable or truncated tar"] >= 1
    assert any("no caption" in str(w.message) and "00000.tar" in str(w.message) for w in caught)


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
def test_nothing_usable_is_one_clear_error_and_never_a_hang(tmp_path, mode):
    write_shard(tmp_path / "00000.tar", [("a", {"jpg": b"garbage", "txt": b"a"}), ("b", {"txt": b"no image"})])
    write_shard(tmp_path / "00001.tar", [])
    s = ShardStream(str(tmp_path / "*.tar"), 8, options=StreamOptions(mode, 4, 0, 0))
    with warnings.catch_warnings(), pytest.raises(DataError, match=r"nothing usable left in .* on rank 0 of 1 "
                                                  r"\(skipped so far: \d+ no image, \d+ undecodable image\)"):
        warnings.simplefilter("ignore", SkippedDataWarning)
        s.take(1)


def test_empty_lists_too_few_shards_and_bad_options_are_clear(tmp_path):
    with pytest.raises(DataError, match="no shard matches"):
        ShardStream(str(tmp_path / "{0..3}.tar"), 8)
    pattern = write_shards(tmp_path, shards=2, per_shard=2)
    with pytest.raises(DataError, match="2 shard.s. for 3 ranks: epoch mode gives each rank whole shards"):
        ShardStream(pattern, 8, 0, 3, StreamOptions("epoch", 0, 0))
    assert ShardStream(pattern, 8, 0, 2, StreamOptions("epoch", 0, 4)).num_workers == 1  # one shard: one worker
    assert len(ShardStream(pattern, 8, 2, 3, StreamOptions("resampled", 0, 0)).take(3)) == 3
    with pytest.raises(DataError, match="unknown --data-mode 'shuffled'"):
        StreamOptions("shuffled")


def test_image_folder_rows_split_across_ranks_resume_by_position_and_skip_undecodable_files(tmp_path):
    for i in range(8):
        Image.new("RGB", (10, 12), (i, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"row {i}")
    table = ImageFolderTable(tmp_path, 8)
    (tmp_path / "3.png").write_bytes(b"not a png")  # listed, then unreadable
    opts = StreamOptions("epoch", 0, 1, 0)
    with pytest.warns(SkippedDataWarning, match="undecodable image"):
        seen = [[c for _, c in TableStream(table, "folder", r, 2, opts).one_pass(2)] for r in (0, 1)]
    assert sorted(seen[0] + seen[1]) == [f"row {i}" for i in range(8) if i != 3]  # 4 rows a rank, once each
    a = TableStream(table, "folder", 0, 2, StreamOptions("epoch", 0, 0, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedDataWarning)
        a.take(2)
        b = TableStream(table, "folder", 0, 2, StreamOptions("epoch", 0, 0, 0))
        b.load_state_dict(a.state_dict())
        assert [c for _, c in b.take(5)] == [c for _, c in a.take(5)]  # across the epoch boundary too
