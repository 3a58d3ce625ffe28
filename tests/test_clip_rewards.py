"""CLIP-architecture rewards: open_clip -> CLIPModel key conversion, score definitions, gradients, offline errors."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from rglcd.loading import ModelLoadError
from rglcd.rewards import get_reward
from rglcd.rewards.clip import ClipReward, _features, clip_preprocess, load_hps, open_clip_to_hf


def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=2, max_position_embeddings=8, hidden_act="gelu", bos_token_id=512,
                         eos_token_id=513, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=8)
    return CLIPModel(cfg).eval()


def to_open_clip_layout(model: CLIPModel) -> dict:
    """Write a CLIPModel's weights in open_clip's key layout (packed in_proj q,k,v; projections as x @ proj)."""
    sd, out = model.state_dict(), {}
    for tower, hf in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        for i in range(2):
            a, b = f"{tower}.resblocks.{i}.", f"{hf}.layers.{i}."
            for kind in ("weight", "bias"):
                out[f"{a}attn.in_proj_{kind}"] = torch.cat([sd[f"{b}self_attn.{p}_proj.{kind}"] for p in "qkv"])
                out[f"{a}attn.out_proj.{kind}"] = sd[f"{b}self_attn.out_proj.{kind}"]
                out[f"{a}ln_1.{kind}"], out[f"{a}ln_2.{kind}"] = sd[f"{b}layer_norm1.{kind}"], sd[f"{b}layer_norm2.{kind}"]
                out[f"{a}mlp.c_fc.{kind}"], out[f"{a}mlp.c_proj.{kind}"] = sd[f"{b}mlp.fc1.{kind}"], sd[f"{b}mlp.fc2.{kind}"]
    v, t = "vision_model.", "text_model."
    out.update({
        "visual.class_embedding": sd[v + "embeddings.class_embedding"],
        "visual.positional_embedding": sd[v + "embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd[v + "embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": sd[v + "pre_layrnorm.weight"], "visual.ln_pre.bias": sd[v + "pre_layrnorm.bias"],
        "visual.ln_post.weight": sd[v + "post_layernorm.weight"], "visual.ln_post.bias": sd[v + "post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].T,
        "token_embedding.weight": sd[t + "embeddings.token_embedding.weight"],
        "positional_embedding": sd[t + "embeddings.position_embedding.weight"],
        "ln_final.weight": sd[t + "final_layer_norm.weight"], "ln_final.bias": sd[t + "final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T, "logit_scale": sd["logit_scale"],
    })
    return {"module." + k: val for k, val in out.items()}  # DDP-saved checkpoints carry this prefix


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory, tiny_sd21_repo):
    root = tmp_path_factory.mktemp("hps")
    model = tiny_clip()
    model.config.save_pretrained(root / "base")
    import shutil
    for f in (tiny_sd21_repo / "tokenizer").iterdir():
        shutil.copy(f, root / "base" / f.name)
    torch.save({"state_dict": to_open_clip_layout(model)}, root / "HPS_v2.1_compressed.pt")
    return root, model


def test_converter_restores_every_tensor(hps_files):
    _, model = hps_files
    converted = open_clip_to_hf(to_open_clip_layout(model))
    ref = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert set(converted) == set(ref)
    assert all(torch.equal(converted[k], ref[k]) for k in ref)


def test_hps_score_is_100_cos_and_differentiable(hps_files):
    root, model = hps_files
    reward = load_hps(str(root / "HPS_v2.1_compressed.pt"), base=str(root / "base"))
    images = torch.rand(2, 3, 40, 48, requires_grad=True)
    prompts = ["a cat", "a dog"]
    scores = reward(images, prompts)
    with torch.no_grad():
        tok = reward.tokenizer(prompts, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
        img = _features(model.get_image_features(pixel_values=clip_preprocess(images.detach(), 32)))
        txt = _features(model.get_text_features(input_ids=tok.input_ids))
        expected = 100 * torch.nn.functional.cosine_similarity(img, txt)
    assert torch.allclose(scores.detach(), expected, atol=1e-4)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_pickscore_and_clipscore_definitions(hps_files, tiny_sd21_repo):
    root, model = hps_files
    reward = load_hps(str(root), base=str(root / "base"))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        hps = reward.score_matrix(images, ["a", "b"])
        cos = hps / 100
        reward.score = "pickscore"
        assert torch.allclose(reward.score_matrix(images, ["a", "b"]), model.logit_scale.exp() * cos, atol=1e-4)
        reward.score = "clipscore"
        assert torch.allclose(reward.score_matrix(images, ["a", "b"]), 100 * cos.clamp_min(0), atol=1e-4)
    with pytest.raises(ValueError, match="unknown CLIP score"):
        ClipReward(model, reward.tokenizer, "aesthetic")


def test_preprocess_crops_the_centre_square():
    img = torch.zeros(1, 3, 100, 200)
    img[..., 50:150] = 1.0
    out = clip_preprocess(img, 224)
    assert out.shape == (1, 3, 224, 224)
    white = (torch.ones(1, 3, 1, 1) - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / \
        torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(out[..., 20:-20, 20:-20], white.expand(1, 3, 184, 184), atol=1e-3)


def test_missing_checkpoints_name_what_to_download(tmp_path):
    with pytest.raises(ModelLoadError, match="download HPS_v2.1_compressed.pt from the hub repo xswu/HPSv2"):
        get_reward("hpsv2.1")
    with pytest.raises(ModelLoadError, match="yuvalkirstain/PickScore_v1"):
        get_reward("pickscore")
    with pytest.raises(ModelLoadError, match="openai/clip-vit-large-patch14"):
        get_reward("clipscore")
