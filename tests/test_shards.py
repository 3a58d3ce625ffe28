"""Webdataset shard lists and image folders: layouts, captions and clear errors (streaming: tests/test_stream.py)."""

import io
import json
import tarfile

import numpy as np
import torch
import pytest
from PIL import Image

from rglcd.data.shards import DataError, caption_of, list_image_folder, list_shards, resize_center_crop


def png_bytes(w, h, colour):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shard_patterns_expand_braces_and_globs_and_missing_shards_are_clear(tmp_path):
    for name in ("000.tar", "001.tar", "002.tar", "010.tar"):
        (tmp_path / name).write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p in list_shards(str(tmp_path / "{000..002}.tar"))] == ["000.tar", "001.tar",
                                                                                             "002.tar"]
    assert len(list_shards(str(tmp_path / "0{0,1}*.tar"))) == 4
    with pytest.raises(DataError, match="no shard matches"):
        list_shards(str(tmp_path / "{00000..00003}.tar"))


def test_captions_come_from_txt_or_a_json_caption_field():
    assert caption_of({"txt": b" a red box\n"}) == "a red box"
    assert caption_of({"json": json.dumps({"prompt": "blue", "id": 3}).encode()}) == "blue"
    assert caption_of({"json": b"{not json"}) is None and caption_of({"json": b"[1]"}) is None
    assert caption_of({"jpg": b""}) is None


def test_resize_center_crop_keeps_the_centre():
    img = np.zeros((20, 60, 3), dtype=np.uint8)
    img[:, 20:40] = 255
    out = resize_center_crop(img, 10)
    assert out.shape == (3, 10, 10) and (out[:, :, 1:-1] > 0.95).all() and (out[:, :, [0, -1]] < 1).all()


def test_image_folder_layouts(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "x.txt").write_text("black square\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "y.png")  # no caption: skipped
    assert [(p.name, t) for p, t in list_image_folder(tmp_path / "a")] == [("x.png", "black square")]
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "z.jpg")
    (tmp_path / "b" / "metadata.jsonl").write_text(json.dumps({"file_name": "z.jpg", "text": "zed"}) + "\n")
    assert [(p.name, t) for p, t in list_image_folder(tmp_path / "b")] == [("z.jpg", "zed")]
    with pytest.raises(DataError, match="image folder not found"):
        list_image_folder(tmp_path / "nope")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="no captioned image"):
        list_image_folder(tmp_path / "c")


def test_hf_dataset_table_reads_saved_sets_and_explains_bad_ones(tmp_path):
    datasets = pytest.importorskip("datasets")
    from rglcd.data.shards import HFDatasetTable

    images = [Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255)),
              Image.new("RGB", (16, 16))]
    ds = datasets.Dataset.from_dict({"image": images, "caption": ["a red box", "blue", ""], "id": [1, 2, 3]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string"),
                                                                "id": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "set")
    table = HFDatasetTable(f"hf:{tmp_path / 'set'}", 8)
    assert len(table) == 2  # the empty caption is skipped
    x, text = table[0]
    assert text == "a red box" and x.shape == (3, 8, 8) and torch.allclose(x[0], torch.ones(8, 8), atol=1e-2)
    assert x[1:].max() < -0.99
    assert [HFDatasetTable(f"hf:{tmp_path / 'set'}@test", 8)[0][1]] == ["blue"]
    with pytest.raises(DataError, match="no split 'valid'"):
        HFDatasetTable(f"hf:{tmp_path / 'set'}@valid", 8)
    ds.remove_columns("image").save_to_disk(tmp_path / "noimage")
    with pytest.raises(DataError, match="no image column"):
        HFDatasetTable(f"hf:{tmp_path / 'noimage'}", 8)
    with pytest.raises(DataError, match="neither a local folder nor a hub id"):
        HFDatasetTable("hf:nope", 8)


def test_hf_hub_id_offline_names_the_set_and_the_way_out():
    import os
    import subprocess
    import sys

    pytest.importorskip("datasets")
    code = ("from rglcd.data.shards import HFDatasetTable\n"
            "try:\n    HFDatasetTable('hf:owner/captions@train', 8)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert out.startswith("DataError could not load the data set 'owner/captions' split 'train'")
    assert "save_to_disk(DIR)) and pass --data hf:DIR" in out
