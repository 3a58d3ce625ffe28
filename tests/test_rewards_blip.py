"""ImageReward (BLIP) and aesthetic rewards: key conversion, score definitions against BLIP's forward restated in
torch, gradients, tokenizer conventions, offline errors. Tiny random architectures, no hub."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer, BlipTextModel, BlipVisionConfig, BlipVisionModel, CLIPConfig, CLIPModel

from rglcd.loading import ModelLoadError
from rglcd.rewards import get_reward
from rglcd.rewards.aesthetic import ScoreMLP, load_aesthetic
from rglcd.rewards.blip import (IMAGEREWARD_MEAN, IMAGEREWARD_STD, RG_LCD_CLIP_AT, ImageRewardModel,
                                blip_text_config, blip_tokenizer, imagereward_to_hf, load_imagereward)
from rglcd.rewards.clip import _features, clip_preprocess

TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, layer_norm_eps=1e-6, hidden_act="gelu")
WORDS = ["a", "photo", "of", "red", "cat", "dog", "apple", "on", "the", "table"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# BLIP's med_config.json layout, shrunk; encoder_width is overwritten with the vision width as BLIP_Pretrain does.
TINY_MED = dict(architectures=["BertModel"], attention_probs_dropout_prob=0.1, hidden_act="gelu",
                hidden_dropout_prob=0.1, hidden_size=16, initializer_range=0.02, intermediate_size=32,
                layer_norm_eps=1e-12, max_position_embeddings=40, model_type="bert", num_attention_heads=2,
                num_hidden_layers=2, pad_token_id=0, type_vocab_size=2, vocab_size=len(SPECIALS) + len(WORDS) + 2,
                encoder_width=768, add_cross_attention=True)


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-trivial values in every tensor (LayerNorm weights and biases included), so a swapped key shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


def to_imagereward_layout(model: ImageRewardModel) -> dict:
    """Write an ImageRewardModel's weights as ImageReward.pt lays them out (timm ViT, BLIP med.py BERT, mlp)."""
    sd, out, v, vit = model.state_dict(), {}, "vision.", "blip.visual_encoder."
    out[vit + "cls_token"], out[vit + "pos_embed"] = sd[v + "embeddings.class_embedding"], sd[
        v + "embeddings.position_embedding"]
    block_names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                   "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for kind in ("weight", "bias"):
        out[f"{vit}patch_embed.proj.{kind}"] = sd[f"{v}embeddings.patch_embedding.{kind}"]
        out[f"{vit}norm.{kind}"] = sd[f"{v}post_layernorm.{kind}"]
        for i in range(TINY_VISION["num_hidden_layers"]):
            for old, new in block_names.items():
                out[f"{vit}blocks.{i}.{old}.{kind}"] = sd[f"{v}encoder.layers.{i}.{new}.{kind}"]
    out.update({"blip.text_encoder." + k.removeprefix("text."): t for k, t in sd.items() if k.startswith("text.")})
    out.update({"mlp." + k.removeprefix("head."): t for k, t in sd.items() if k.startswith("head.")})
    # Saved by BLIP_Pretrain too, unused by the score.
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(TINY_MED["max_position_embeddings"])[None]
    out.update({"blip.vision_proj.weight": torch.randn(8, 16), "blip.vision_proj.bias": torch.randn(8),
                "blip.text_proj.weight": torch.randn(8, 16), "blip.text_proj.bias": torch.randn(8)})
    return out


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    (root / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "tokenizer")
    vision = BlipVisionModel(BlipVisionConfig(**TINY_VISION))
    text = BlipTextModel(blip_text_config(TINY_MED, TINY_VISION["hidden_size"]), add_pooling_layer=False)
    model = perturbed(ImageRewardModel(vision, text, blip_tokenizer(str(root / "tokenizer"))), seed=0)
    layout = to_imagereward_layout(model)
    torch.save(layout, root / "ImageReward.pt")
    (root / "med_config.json").write_text(json.dumps(TINY_MED))
    return root, model, layout


def load_tiny(root, clip_at=None) -> ImageRewardModel:
    return load_imagereward(str(root), tokenizer=str(root / "tokenizer"), clip_at=clip_at, vision=TINY_VISION)


def blip_score(sd: dict, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ImageReward's score restated from BLIP's vit.py / med.py and ImageReward.py on the checkpoint's own keys."""
    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def norm(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)

    def attend(q, k, v, attend_to=None):
        heads = [t.unflatten(-1, (2, -1)).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*heads, attn_mask=attend_to).transpose(1, 2).flatten(2)

    vit, bert = "blip.visual_encoder.", "blip.text_encoder."
    x = F.conv2d(pixels, sd[vit + "patch_embed.proj.weight"], sd[vit + "patch_embed.proj.bias"], stride=8)
    x = torch.cat([sd[vit + "cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1) + sd[
        vit + "pos_embed"]
    for i in range(2):
        b = f"{vit}blocks.{i}."
        x = x + lin(attend(*lin(norm(x, b + "norm1", 1e-6), b + "attn.qkv").chunk(3, -1)), b + "attn.proj")
        x = x + lin(F.gelu(lin(norm(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    image = norm(x, vit + "norm", 1e-6)
    emb = sd[bert + "embeddings.word_embeddings.weight"][ids] + sd[bert + "embeddings.position_embeddings.weight"][
        : ids.shape[1]]
    h = norm(emb, bert + "embeddings.LayerNorm", 1e-12)
    for i in range(2):
        b = f"{bert}encoder.layer.{i}."
        real_tokens = mask[:, None, None].bool()
        for part, source, attend_to in (("attention", None, real_tokens), ("crossattention", image, None)):
            src = h if source is None else source
            a = attend(lin(h, f"{b}{part}.self.query"), lin(src, f"{b}{part}.self.key"),
                       lin(src, f"{b}{part}.self.value"), attend_to)
            h = norm(lin(a, f"{b}{part}.output.dense") + h, f"{b}{part}.output.LayerNorm", 1e-12)
        h = norm(lin(F.gelu(lin(h, b + "intermediate.dense")), b + "output.dense") + h, b + "output.LayerNorm", 1e-12)
    r = h[:, 0]
    for j in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{j}")
    return (r[:, 0] - 0.16717362830052426) / 1.0333394966054072


def test_converter_restores_every_tensor(imagereward_files):
    _, model, layout = imagereward_files
    converted, ref = imagereward_to_hf(layout), model.state_dict()
    assert set(converted) == set(ref)
    assert all(torch.equal(converted[k], ref[k]) for k in ref)
    assert set(imagereward_to_hf({"module." + k: t for k, t in layout.items()})) == set(ref)  # DDP-saved keys


def test_imagereward_score_is_blips_and_differentiable(imagereward_files):
    root, _, layout = imagereward_files
    reward = load_tiny(root)
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())
    images = torch.rand(2, 3, 40, 48, requires_grad=True)
    prompts = ["a photo of a red apple on the table", "dog"]
    scores = reward(images, prompts)
    tok = reward.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        expected = blip_score(layout, clip_preprocess(images.detach(), 32), tok.input_ids, tok.attention_mask)
    assert scores.shape == (2,)
    assert torch.allclose(scores.detach(), expected, atol=1e-4), (scores, expected)
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert (IMAGEREWARD_MEAN, IMAGEREWARD_STD) == (0.16717362830052426, 1.0333394966054072)


def test_tokens_follow_imagereward(imagereward_files):
    root, _, _ = imagereward_files
    tok = load_tiny(root).tokenizer
    n = len(SPECIALS) + len(WORDS)
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n, n + 1] and tok.bos_token == "[DEC]"
    ids = tok(["a red cat", "dog"], padding="max_length", truncation=True, max_length=35).input_ids
    assert [len(i) for i in ids] == [35, 35]
    assert ids[0][:6] == [tok.cls_token_id, *tok.convert_tokens_to_ids(["a", "red", "cat"]), tok.sep_token_id, 0]


def test_clipped_variant_is_min_r_minus_c_0(imagereward_files):
    root, _, _ = imagereward_files
    reward = load_tiny(root)
    images, prompts = torch.rand(4, 3, 32, 32), ["a cat", "a dog", "red apple", "the table"]
    with torch.no_grad():
        r = reward(images, prompts)
    reward.clip_at = float(r.median())
    images.requires_grad_(True)
    clipped = reward(images, prompts)
    assert torch.allclose(clipped.detach(), (r - reward.clip_at).clamp_max(0), atol=1e-5)
    clipped.sum().backward()
    above = r > reward.clip_at
    assert above.any() and (images.grad[above] == 0).all() and images.grad[~above].abs().sum() > 0


def test_rg_lcd_clip_level_is_2(imagereward_files):
    root, _, _ = imagereward_files
    images = torch.rand(1, 3, 32, 32)
    assert RG_LCD_CLIP_AT == 2.0
    with torch.no_grad():
        r = load_tiny(root)(images, ["cat"])
        assert torch.allclose(load_tiny(root, RG_LCD_CLIP_AT)(images, ["cat"]), (r - 2).clamp_max(0))


def test_imagereward_errors_name_the_files(imagereward_files, tmp_path):
    root, _, layout = imagereward_files
    download = "download ImageReward.pt and med_config.json from the hub repo THUDM/ImageReward"
    for name in ("imagereward", "imagereward-clipped"):
        with pytest.raises(ModelLoadError, match=download):
            get_reward(name)
    torch.save(layout, tmp_path / "ImageReward.pt")
    with pytest.raises(ModelLoadError, match="med_config.json"):
        load_imagereward(str(tmp_path / "ImageReward.pt"))
    (tmp_path / "med_config.json").write_text(json.dumps(TINY_MED))
    with pytest.raises(ModelLoadError, match="does not fit"):  # a vision tower one block deeper than the file's
        load_imagereward(str(tmp_path), tokenizer=str(root / "tokenizer"),
                         vision=dict(TINY_VISION, num_hidden_layers=3))
    with pytest.raises(ModelLoadError, match="tokenizer has 17 tokens but ImageReward's text encoder 99"):
        ImageRewardModel(BlipVisionModel(BlipVisionConfig(**TINY_VISION)),
                         BlipTextModel(blip_text_config(dict(TINY_MED, vocab_size=99), 16), add_pooling_layer=False),
                         blip_tokenizer(str(root / "tokenizer")))


@pytest.fixture(scope="module")
def aesthetic_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=1, max_position_embeddings=8, bos_token_id=62, eos_token_id=63),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=8)).eval()
    clip.save_pretrained(root / "clip")
    head = perturbed(ScoreMLP(8), seed=1)
    torch.save(head.state_dict(), root / "sac+logos+ava1-l14-linearMSE.pth")
    return root, clip, head


def test_aesthetic_score_is_mlp_of_normalised_clip_embedding(aesthetic_files):
    root, clip, head = aesthetic_files
    reward = load_aesthetic(str(root), base=str(root / "clip"))
    images = torch.rand(3, 3, 48, 40, requires_grad=True)
    scores = reward(images, ["ignored"] * 3)
    with torch.no_grad():
        e = F.normalize(_features(clip.get_image_features(pixel_values=clip_preprocess(images.detach(), 32))), dim=-1)
        sd = head.state_dict()
        for j in (0, 2, 4, 6, 7):
            e = F.linear(e, sd[f"layers.{j}.weight"], sd[f"layers.{j}.bias"])
        assert torch.allclose(scores.detach(), e[:, 0], atol=1e-5)
        assert torch.equal(reward(images, None), scores)
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_aesthetic_errors_name_the_files(aesthetic_files, tmp_path):
    root, _, _ = aesthetic_files
    with pytest.raises(ModelLoadError, match=r"download sac\+logos\+ava1-l14-linearMSE.pth from "
                                             r"github.com/christophschuhmann/improved-aesthetic-predictor"):
        get_reward("aesthetic")
    torch.save({"weight": torch.zeros(1, 8), "bias": torch.zeros(1)}, tmp_path / "head.pth")
    with pytest.raises(ModelLoadError, match="not an improved-aesthetic-predictor head"):
        load_aesthetic(str(tmp_path / "head.pth"), base=str(root / "clip"))
