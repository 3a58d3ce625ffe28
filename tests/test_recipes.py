"""The SD2.1 and SDXL recipes in train/configs run for a few steps from their own family presets (the real hub ids,
served by the offline rehearsal cache of tests/hub_layouts.py) on webdataset shards built in the test (only data,
sizes and precision are overridden; every other setting is the recipe's)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rglcd.data.shards import DataError
from rglcd.models import PRESETS, load_family
from rglcd.training.cli_args import parse_config
from rglcd.methods import get_method
from rglcd.training.distill import DistillConfig, train_distill
from rglcd.training.settings import flat_values
from tests.test_shards import png_bytes, write_shard

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
SD_RECIPES = sorted(p.name for p in CONFIGS.glob("sd*.yaml"))


def _tiny_family(root, preset, repo, components, tiny_emoji_family):
    """The `preset` family pointed at a tiny repo of the same layout, at 32 px; reward: the tiny emoji reward
    (HPS / ImageReward loading is tested in their own files)."""
    spec = json.loads(json.dumps(PRESETS[preset]))
    for key in components:
        spec[key]["repo"] = str(repo)
    spec["members"] = {"teacher": {"unet": {"repo": str(repo), "subfolder": "unet"}, "kind": "teacher"}}
    shutil.copytree(tiny_emoji_family / "reward", root / "reward")
    spec.update(resolution=32, max_length=16, reward="emoji=reward")
    (root / "family.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="module")
def tiny_sd21_family(tiny_sd21_repo, tiny_emoji_family, tmp_path_factory):
    return _tiny_family(tmp_path_factory.mktemp("tiny-sd21-family"), "sd21", tiny_sd21_repo,
                        ("vae", "text_encoder", "tokenizer", "scheduler"), tiny_emoji_family)


@pytest.fixture(scope="module")
def tiny_sdxl_family(tiny_sdxl_repo, tiny_emoji_family, tmp_path_factory):
    return _tiny_family(tmp_path_factory.mktemp("tiny-sdxl-family"), "sdxl", tiny_sdxl_repo,
                        ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
                        tiny_emoji_family)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    for s in range(2):
        write_shard(root / f"{s:05d}.tar", [(f"{s}-{i}", {"jpg": png_bytes(40, 36, c), "txt": f"a box {i}".encode()})
                                            for i, c in enumerate(colours)])
    return str(root / "{00000..00001}.tar")


@pytest.mark.parametrize("recipe", SD_RECIPES)
def test_sd_recipe_runs_a_few_steps_from_the_real_ids(recipe, real_hub, tiny_shards, tmp_path):
    """The recipe's own family preset (sd21, sd21-base, sdxl: the real hub ids, from the rehearsal cache); only data,
    sizes and precision are overridden. The export loads through a family file that extends the preset."""
    cfg = parse_config(DistillConfig, argv=[
        "--config", str(CONFIGS / recipe), "--data", tiny_shards,
        "--output-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "export"), "--max-steps", "2",
        "--batch-size", "2", "--resolution", "32", "--mixed-precision", "no", "--warmup-steps", "1"]
        + (["--reward", "none"] if "rg-lcd" in recipe else [])
        + (["--trajectory-data", "4", "--trajectory-batch", "4"] if "mlcm" in recipe else []))
    recipe_values = json.loads(json.dumps(__import__("yaml").safe_load((CONFIGS / recipe).read_text())))
    assert cfg.family == recipe_values["family"] in PRESETS and recipe.startswith(f"{cfg.family}-")
    for key in ("method", "learning_rate", "ema_decay", "w_min", "w_max", "loss_type", "lora_rank", "reward_scale"):
        if key in recipe_values:
            assert flat_values(cfg)[key] == recipe_values[key], key
    metrics = train_distill(cfg)
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    kind = get_method(cfg.method).kind
    teacher = PRESETS[cfg.family]["members"]["teacher"]["unet"]
    entry = ({"unet": teacher, "lora": str(tmp_path / "export"), "kind": kind} if cfg.lora.lora_rank
             else {"unet": str(tmp_path / "export"), "kind": kind})
    (tmp_path / "family.json").write_text(json.dumps({"extends": cfg.family, "members": {cfg.member: entry}}))
    pipe = load_family(str(tmp_path)).pipeline(cfg.member)
    image = pipe(["a box"], num_inference_steps=2, guidance_scale=1.5 if cfg.lora.lora_rank else 4.0,
                 height=32, width=32, output_type="pt").images
    assert image.shape == (1, 3, 32, 32)


def test_shard_stream_resumes_at_its_position_and_bad_sources_are_clear(tiny_sd21_family, tiny_shards, tmp_path):
    """Epoch mode without a shuffle buffer streams each shard's samples once an epoch and resumes after the shards
    already started; the default (resampled) stream resumes as a fresh draw seeded by the position, the same each
    time."""
    from rglcd.data.batches import training_batches
    from rglcd.data.stream import StreamOptions

    family = load_family(str(tiny_sd21_family))
    epoch = StreamOptions("epoch", 0, 0)
    a = training_batches(tiny_shards, family, 32, stream=epoch)
    g = torch.Generator().manual_seed(0)
    first = [a.batch(4, g)[2] for _ in range(3)]
    assert sorted(sum(first, [])) == sorted(f"a box {i}" for i in range(6) for _ in range(2))
    b = training_batches(tiny_shards, family, 32, stream=epoch)
    b.load_state_dict(a.state_dict())  # both shards started: the next epoch
    assert sorted(b.batch(6, g)[2] + b.batch(6, g)[2]) == sorted(sum(first, []))
    resampled = [training_batches(tiny_shards, family, 32) for _ in range(3)]
    resampled[0].batch(5, g)
    for r in resampled[1:]:
        r.load_state_dict(resampled[0].state_dict())
    assert resampled[1].batch(3, g)[2] == resampled[2].batch(3, g)[2]
    z, ctx, _ = resampled[1].batch(2, g)
    assert z.shape == (2, 4, 4, 4) and ctx.shape[:2] == (2, 16)
    from rglcd.data.batches import EncodedBatches

    cached = EncodedBatches(tiny_shards, family, 32, cache=True, cache_root=tmp_path / "cache", rank=1, world=2)
    assert sorted(cached.captions) == [f"a box {i}" for i in range(6)] and cached.cached["latents"].shape[0] == 6
    from types import SimpleNamespace

    from rglcd.training.distill import distill_data

    cfg = parse_config(DistillConfig, argv=["--data", tiny_shards, "--data-mode", "epoch", "--shuffle-buffer", "0",
                                            "--dataloader-num-workers", "0", "--seed", "3", "--resolution", "32"])
    wired = distill_data(cfg, family, SimpleNamespace(process_index=1, num_processes=2)).source
    assert wired.options == StreamOptions("epoch", 0, 0, 3) and (wired.rank, wired.world) == (1, 2)
    with pytest.raises(DataError, match="no shard matches"):
        training_batches(str(tmp_path / "{0..3}.tar"), family, 32).batch(1, g)
    with pytest.raises(DataError, match="unknown data source"):
        training_batches("laion", family, 32)


def test_sdxl_conditioning_matches_the_sdxl_pipeline(tiny_sdxl_family):
    family = load_family(str(tiny_sdxl_family))
    assert family.is_sdxl and not load_family("emoji-64").is_sdxl
    pipe = family.pipeline("teacher")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    embeds, _, pooled, _ = pipe.encode_prompt("a red box", device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    ctx = family.encode(["a red box", ""])
    assert ctx.shape == (2, 17, 64)
    assert torch.allclose(ctx[:1, :-1], embeds, atol=1e-5) and torch.allclose(ctx[0, -1, :32], pooled[0], atol=1e-5)
    assert (ctx[1] == 0).all()
    unet = family.unet("teacher")
    kwargs = family.unet_inputs(unet, ctx)
    assert kwargs["added_cond_kwargs"]["time_ids"].tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2
    out = unet(torch.randn(2, 4, 4, 4), torch.tensor([10, 500]), **kwargs).sample
    assert out.shape == (2, 4, 4, 4)


def test_lcd_trains_from_a_hugging_face_dataset(tiny_sd21_family, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (40, 36), c) for c in colours],
                                     "text": [f"a box {i}" for i in range(4)]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "text": datasets.Value("string")}))
    ds.save_to_disk(tmp_path / "hfset")
    cfg = parse_config(DistillConfig, argv=[
        "--config", str(CONFIGS / "sd21-lcd.yaml"), "--family", str(tiny_sd21_family),
        "--data", f"hf:{tmp_path / 'hfset'}", "--output-dir", str(tmp_path / "run"),
        "--export-dir", str(tmp_path / "export"), "--max-steps", "2", "--batch-size", "2", "--resolution", "32",
        "--mixed-precision", "no", "--warmup-steps", "1", "--member", "lcm-hf"])
    metrics = train_distill(cfg)
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert load_family(str(tiny_sd21_family)).member("lcm-hf")["kind"] == "lcm"


def test_posterior_sampled_data_latents_train_on_streamed_shards_only(tiny_sd21_family, tiny_shards, tmp_path):
    """`--data-latents sample` (diffusers' LCD script): a fresh posterior draw per step from the step's generator,
    so a run repeats; refused where latents are cached."""
    base = ["--config", str(CONFIGS / "sd21-lcd.yaml"), "--family", str(tiny_sd21_family), "--data", tiny_shards,
            "--export-dir", "none", "--max-steps", "2", "--batch-size", "2", "--resolution", "32",
            "--mixed-precision", "no", "--warmup-steps", "1", "--data-latents", "sample"]
    runs = [train_distill(parse_config(DistillConfig, argv=base + ["--output-dir", str(tmp_path / r)]))
            for r in ("a", "b")]
    assert runs[0]["loss"] == runs[1]["loss"] and torch.isfinite(torch.tensor(runs[0]["loss"]))
    mode = train_distill(parse_config(DistillConfig, argv=base[:-1] + ["mode", "--output-dir", str(tmp_path / "m")]))
    assert mode["loss"] != runs[0]["loss"]
    with pytest.raises(ValueError, match="without --cache-latents"):
        train_distill(parse_config(DistillConfig, argv=base + ["--cache-latents", "--output-dir", str(tmp_path / "c")]))
