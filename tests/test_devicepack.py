"""The GPU-machine pack (rglcd.devicepack): a vocabulary-restricted MiniLM that encodes the training captions as the
full one does, and a pack -> run -> unpack rehearsal on the CPU whose members load and sample here."""

import json
from pathlib import Path

import torch

from rglcd import devicepack
from rglcd.loading import minilm_path
from rglcd.models import encode_prompts, load_family
from tests.entry_points import run_entry_point

ROOT = Path(__file__).resolve().parents[1]


def test_restricted_vocabulary_tokenizes_identically_and_encodes_within_fp16_weight_rounding(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    texts = ["red apple", "an emoji of a grinning face with sweat", "", "a flat illustration of Kaaba"]
    size = devicepack.restrict_vocabulary(minilm_path(), texts, tmp_path / "small")
    full_t, small_t = AutoTokenizer.from_pretrained(str(minilm_path())), AutoTokenizer.from_pretrained(
        str(tmp_path / "small"))
    assert size == len(small_t) < 60
    for text in texts:
        assert small_t.convert_ids_to_tokens(small_t(text).input_ids) == full_t.convert_ids_to_tokens(
            full_t(text).input_ids)
    full_t.model_max_length = small_t.model_max_length = 32
    small = AutoModel.from_pretrained(str(tmp_path / "small"))
    assert small.dtype == torch.float32
    a = encode_prompts(full_t, AutoModel.from_pretrained(str(minilm_path())).eval(), texts)
    b = encode_prompts(small_t, small.eval(), texts)
    assert (a - b).norm() / a.norm() < 3e-3  # fp16 storage of the weights; states themselves are cached in fp16
    assert (a - b).abs().max() > 0  # the restricted copy really is a different file


def test_pack_run_unpack_rehearsal_on_cpu(tmp_path, monkeypatch):
    plan = {"teacher": {"block_out_channels": [32, 32], "attention_head_dim": 4, "batch_size": 4,
                        "max_steps": 3, "warmup_steps": 1, "ema_decay": 0.9, "export_dtype": "fp16"},
            "teacher_precision": "no", "probe_steps": 2, "teacher_seconds": 0.01, "students_seconds": 240,
            "students": {"lcm": {"config": "train/configs/emoji-64-lcd.yaml", "kind": "lcm", "max_steps": 1,
                                 "batch_size": 2}}}
    sizes = devicepack.pack(tmp_path / "pack", plan, limit=6, wheels=False)
    assert {"inputs.pt", "minilm/model.safetensors", "minilm/vocab.txt", "family/family.json", "plan.json"} <= set(
        sizes)
    threads = torch.get_num_threads()
    with monkeypatch.context() as env:  # the run's own environment, restored before the family loads here
        env.setenv("RGLCD_MINILM_PATH", str(tmp_path / "pack" / "minilm"))
        env.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the run sets it for its teacher
        try:  # in this process (the students still start their own): the GPU machine's command line
            code, _, err = run_entry_point(ROOT / "train" / "emoji_gpu.py", [
                "run", "--dir", str(tmp_path / "pack"), "--out", str(tmp_path / "out"), "--work",
                str(tmp_path / "work"), "--device", "cpu"], cwd=ROOT)
        finally:
            torch.set_num_threads(threads)
    assert code == 0, err[-2000:]
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["teacher_steps"] == 3 and report["students_rc"] == {"lcm": 0}
    assert all(p.stat().st_size <= devicepack.PART_BYTES for p in (tmp_path / "out").glob("members.tar.gz.part*"))
    family = load_family(str(devicepack.unpack(tmp_path / "out", tmp_path / "family")))
    assert family.members == ["teacher", "lcm"]
    image = family.pipeline("lcm")(["red apple"], num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 64, 64)


def test_unpack_refuses_assets_and_missing_parts(tmp_path):
    args = ["unpack", str(tmp_path), "--dest"]
    code, _, err = run_entry_point(ROOT / "train" / "emoji_gpu.py", args + ["assets/models/emoji-64-new"], cwd=ROOT)
    assert code == 2 and "never under assets/" in err
    code, _, err = run_entry_point(ROOT / "train" / "emoji_gpu.py", args + [str(tmp_path / "fam")], cwd=ROOT)
    assert code == 2 and "no members.tar.gz.part*" in err
