"""The emoji reward and the reward registry."""

import pytest
import torch

from rglcd.loading import ModelLoadError
from rglcd.rewards import RewardMix, get_reward, parse_mix
from rglcd.rewards.emoji import EmojiReward


@pytest.fixture(scope="module")
def tiny_reward():
    torch.manual_seed(0)
    return EmojiReward(image_size=64, embed_dim=16).eval()


def test_score_shape_range_and_gradient(tiny_reward):
    images = torch.rand(3, 3, 64, 64, requires_grad=True)
    scores = tiny_reward(images, ["red apple", "cat", "rocket"])
    assert scores.shape == (3,) and scores.abs().max() <= 100 + 1e-4
    scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in tiny_reward.image_tower.parameters())


def test_score_matrix_matches_forward(tiny_reward):
    images, prompts = torch.rand(2, 3, 64, 64), ["sun", "moon"]
    with torch.no_grad():
        m = tiny_reward.score_matrix(images, prompts)
        assert torch.allclose(m.diagonal(), tiny_reward(images, prompts), atol=1e-4)


def test_towers_stay_frozen_in_train_mode(tiny_reward):
    tiny_reward.train()
    assert not tiny_reward.image_tower.training and not tiny_reward.text_tower.training
    tiny_reward.eval()


def test_save_load_round_trip(tiny_reward, tmp_path):
    tiny_reward.save_pretrained(tmp_path / "r")
    loaded = get_reward("emoji", weights=str(tmp_path / "r"))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(images, ["a", "b"]), tiny_reward(images, ["a", "b"]), atol=1e-5)


def test_committed_reward_prefers_the_right_caption():
    from rglcd.data.emoji import load_renders

    concepts, images = load_renders("train")
    pick = [i for i, c in enumerate(concepts) if c.name in ("pizza", "rocket", "snowman", "banana")]
    reward = get_reward("emoji")
    with torch.no_grad():
        m = reward.score_matrix(images[pick].float() / 255, [concepts[i].name for i in pick])
    assert (m.argmax(1) == torch.arange(len(pick))).all()


def test_registry_errors_and_mix(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(ModelLoadError, match="not found"):
        get_reward("emoji", weights=str(tmp_path / "missing"))
    assert parse_mix("hpsv2.1=1.0, imagereward=0.1") == {"hpsv2.1": 1.0, "imagereward": 0.1}
    with pytest.raises(ValueError, match="bad reward weight"):
        parse_mix("a=x")


class ConstReward(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, images, prompts):
        return images.flatten(1).mean(1) * 0 + self.value


def test_mix_is_the_weighted_sum():
    mix = RewardMix({"a": ConstReward(2.0), "b": ConstReward(-1.0)}, {"a": 0.5, "b": 3.0})
    out = mix(torch.rand(4, 3, 8, 8), ["x"] * 4)
    assert torch.allclose(out, torch.full((4,), 0.5 * 2.0 + 3.0 * -1.0))


def test_name_at_weights_loads_that_folder_and_its_fingerprint_follows_the_files(tiny_reward, tmp_path):
    from rglcd.rewards import split_spec, weights_fingerprint

    tiny_reward.save_pretrained(tmp_path / "r")
    spec = f"emoji@{tmp_path / 'r'}"
    assert split_spec(spec) == ("emoji", str(tmp_path / "r")) and split_spec("emoji") == ("emoji", None)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(get_reward(spec)(images, ["a", "b"]), tiny_reward(images, ["a", "b"]), atol=1e-5)
        mix = get_reward(f"{spec}=2")
        assert torch.allclose(mix(images, ["a", "b"]), 2 * tiny_reward(images, ["a", "b"]), atol=1e-5)
    before = weights_fingerprint(spec)
    assert before.startswith(spec + "|") and weights_fingerprint("emoji") == "emoji"
    torch.manual_seed(1)
    EmojiReward(image_size=64, embed_dim=8).save_pretrained(tmp_path / "r")
    assert weights_fingerprint(spec) != before
    with pytest.raises(ModelLoadError, match="not found"):
        get_reward(f"emoji@{tmp_path / 'missing'}")
    with pytest.raises(ModelLoadError, match="give one"):
        get_reward(spec, weights=str(tmp_path / "other"))


def test_reward_heads_train_on_a_caption_set_and_measure_the_phrased_share(tmp_path):
    from rglcd.data.emoji import cache_dir, captions, heldout_half, load_renders, phrased_prompts
    from rglcd.training.reward import RewardConfig, phrased_share, train_reward

    cfg = RewardConfig(export_dir=str(tmp_path / "wide"), caption_set="wide", views=2, max_steps=3, batch_size=8,
                       limit_concepts=12)
    metrics = train_reward(cfg)
    assert (tmp_path / "wide" / "heads.safetensors").is_file() and (tmp_path / "wide" / "metrics.json").is_file()
    assert metrics["caption_set"] == "wide" and metrics["steps"] == 3
    cached = sorted(p.name for p in cache_dir().glob("reward-features-*-wide48.pt"))
    assert cached == ["reward-features-heldout-128-2-12-wide48.pt", "reward-features-train-128-2-12-wide48.pt"]
    # the share restated: validation-half concepts only, the true render against phrasing vs name
    reward = get_reward(f"emoji@{tmp_path / 'wide'}")
    concepts, images = load_renders("heldout")
    val = set(heldout_half("val"))
    keep = [i for i, c in enumerate(concepts[:12]) if c.name in val]
    assert keep, "the first 12 held-out concepts hold validation ones"
    x = images[keep].float() / 255
    names = [concepts[i].name for i in keep]
    with torch.no_grad():
        half = heldout_half("val")  # each concept phrased as the evaluator's heldout-val-free phrases it
        phrased = [dict(zip(half, phrased_prompts(half, "val")))[n] for n in names]
        expected = (reward(x, phrased).mean() / reward(x, names).mean()).item()
        img = reward.image_features(x)
        txt = reward.text_features(names)
    assert phrased_share(reward, img, txt, names) == pytest.approx(expected, rel=1e-4)
    assert metrics["val_real_phrased_share"] == pytest.approx(expected, rel=1e-3)
    assert len(captions("cat", "wide")) == 48
    with pytest.raises(ValueError, match="unknown --caption-set"):
        train_reward(RewardConfig(export_dir=None, caption_set="nope"))
