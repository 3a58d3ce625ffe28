"""Train the emoji-64 reward's projection heads on frozen tower features (CLIP-style contrastive loss).

The towers are frozen, so their features are computed once per image view and caption (cached) and the heads train
in about a minute. Views: the render, random shifts, and a 2x down-up blur that imitates autoencoder output, so the
reward also reads decoded samples. Held-out concepts are never seen; their zero-shot retrieval is the metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rglcd.data.emoji import (CAPTION_SETS, augment, cache_dir, captions, heldout_half, load_renders, phrased_prompts,
                              to_model_range)
from rglcd.files import write_metrics
from rglcd.rewards.emoji import EmojiReward
from rglcd.training.checkpoints import step_generator
from rglcd.training.export import refuse_shipped
from rglcd.training.settings import setting
from rglcd.training.tracking import require_one_process


@dataclass
class RewardConfig:
    """A reward-head run: the heads' shape, the cached views, the contrastive recipe."""

    export_dir: str | None = setting("runs/emoji-64/reward", "where the reward (EmojiReward.save_pretrained) is "
                                                             "exported; none: no export")
    replace_shipped: bool = setting(False, "allow exporting into assets/ (the shipped family's reward)")
    image_size: int = setting(128, "side in pixels the images are resized to for the frozen image tower")
    embed_dim: int = setting(256, "size of the joint image-text embedding the heads project into")
    hidden_dim: int = setting(0, "hidden width of the two projection heads (0: linear heads)")
    caption_set: str = setting("templates", "the training phrasings the heads learn (rglcd.data.emoji.CAPTION_SETS): "
                                            "templates (12) or wide (48); the shipped reward read the first 4")
    views: int = setting(4, "cached image views per render: the render, then shifted copies, every other one "
                            "also 2x down-up blurred")
    max_steps: int = setting(1000, "optimiser steps")
    batch_size: int = setting(256, "concepts per contrastive batch (each one view and one caption phrasing)")
    learning_rate: float = setting(1e-3, "AdamW peak learning rate of the one-cycle schedule (5% warm-up)")
    weight_decay: float = setting(0.5, "the heads' AdamW weight decay")
    seed: int = setting(0, "seed of the heads' initialisation, the views and every batch draw")
    limit_concepts: int | None = setting(None, "the first this many concepts of each split only")


def image_views(images: torch.Tensor, n_views: int, seed: int) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float [0,1] (V,N,3,H,W): view 0 is the render, others shifted and/or blurred."""
    x = to_model_range(images)
    out = [x]
    for v in range(1, n_views):
        g = step_generator(seed, v)
        y = augment(x, g, max_shift=4, flip=False)
        if v % 2 == 1:
            h = y.shape[-1]
            y = F.interpolate(F.interpolate(y, size=h // 2, mode="bilinear", antialias=True), size=h, mode="bilinear")
        out.append(y)
    return (torch.stack(out) + 1) / 2


@torch.no_grad()
def tower_features(model: EmojiReward, images: torch.Tensor, texts: list[str], batch: int = 128) -> tuple:
    """(image features (V,N,1280) of views (V,N,3,H,W), text features (T,384))."""
    v, n = images.shape[:2]
    flat = images.flatten(0, 1)
    img = torch.cat([model.image_features(c) for c in tqdm(flat.split(batch), desc="image features")]).view(v, n, -1)
    txt = torch.cat([model.text_features(texts[i: i + batch]) for i in range(0, len(texts), batch)])
    return img, txt


def retrieval_accuracy(image_emb: torch.Tensor, text_emb: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Top-1 and top-k accuracy of picking caption i for image i among all N captions; embeddings (N,D)."""
    sims = image_emb @ text_emb.T
    ranks = (sims > sims.diagonal().unsqueeze(1)).sum(1)
    return (ranks == 0).float().mean().item(), (ranks < k).float().mean().item()


def cached_features(model: EmojiReward, split: str, cfg: RewardConfig) -> tuple:
    """(image features (V,N,1280), caption features (N,T,384), names) for a split, cached on disk."""
    concepts, images = load_renders(split)
    if cfg.limit_concepts:
        concepts, images = concepts[: cfg.limit_concepts], images[: cfg.limit_concepts]
    n_captions = len(captions(concepts[0].name, cfg.caption_set))
    path = cache_dir() / (f"reward-features-{split}-{cfg.image_size}-{cfg.views}-{len(concepts)}-{cfg.caption_set}"
                          f"{n_captions}.pt")
    if path.is_file():
        blob = torch.load(path, weights_only=True)
    else:
        texts = [c for con in concepts for c in captions(con.name, cfg.caption_set)]
        img, txt = tower_features(model, image_views(images, cfg.views, cfg.seed), texts)
        blob = {"image": img, "text": txt.view(len(concepts), -1, txt.shape[-1])}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, path)
    return blob["image"], blob["text"], [c.name for c in concepts]


@torch.no_grad()
def phrased_share(model: EmojiReward, image_features: torch.Tensor, name_features: torch.Tensor,
                  names: list[str]) -> float:
    """How much of its score against its bare name a true image keeps against the validation half's
    evaluation-only phrasing of it (`phrased_prompts`): mean cos(image, phrased) / mean cos(image, name), over the
    validation-half concepts among `names`; image features (N,1280) and name text features (N,384) of `names`.
    A reward that reads the phrasing as the name keeps 1; nan when no validation concept is among `names`."""
    half = heldout_half("val")
    prompt = dict(zip(half, phrased_prompts(half, "val")))  # each concept's phrasing, as the evaluator phrases it
    idx = [i for i, n in enumerate(names) if n in prompt]
    if not idx:
        return float("nan")
    zi = F.normalize(model.image_proj(image_features[idx]), dim=-1)
    phrased = model.text_features([prompt[names[i]] for i in idx])
    z_free = F.normalize(model.text_proj(phrased), dim=-1)
    z_name = F.normalize(model.text_proj(name_features[idx]), dim=-1)
    return ((zi * z_free).sum(-1).mean() / (zi * z_name).sum(-1).mean()).item()


def train_reward(cfg: RewardConfig) -> dict[str, float | str]:
    """Train the heads, export them to `cfg.export_dir`, and return held-out retrieval metrics."""
    require_one_process("train/reward.py")
    if cfg.caption_set not in CAPTION_SETS:
        raise ValueError(f"unknown --caption-set {cfg.caption_set!r}: use {' or '.join(CAPTION_SETS)}")
    if cfg.export_dir:
        refuse_shipped(cfg.export_dir, cfg.replace_shipped)
    torch.manual_seed(cfg.seed)
    model = EmojiReward(image_size=cfg.image_size, embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim)
    img, txt, _ = cached_features(model, "train", cfg)
    h_img, h_txt, h_names = cached_features(model, "heldout", cfg)
    heads = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(heads, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.learning_rate, total_steps=cfg.max_steps, pct_start=0.05)
    n_views, n = img.shape[:2]
    n_templates = txt.shape[1]
    model.train()
    bar = tqdm(range(cfg.max_steps), desc="reward heads")
    for step in bar:
        g = step_generator(cfg.seed, step)
        idx = torch.randperm(n, generator=g)[: cfg.batch_size]
        view = torch.randint(n_views, (len(idx),), generator=g)
        tmpl = torch.randint(n_templates, (len(idx),), generator=g)
        zi = F.normalize(model.image_proj(img[view, idx]), dim=-1)
        zt = F.normalize(model.text_proj(txt[idx, tmpl]), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * zi @ zt.T
        labels = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        zi = F.normalize(model.image_proj(h_img[0]), dim=-1)
        zt = F.normalize(model.text_proj(h_txt[:, 0]), dim=-1)
        top1, top5 = retrieval_accuracy(zi, zt)
        zi_blur = F.normalize(model.image_proj(h_img[1]), dim=-1) if n_views > 1 else zi
        top1_blur, _ = retrieval_accuracy(zi_blur, zt)
        val = [i for i, n in enumerate(h_names) if n in set(heldout_half("val"))]
        val_top1, val_top5 = retrieval_accuracy(zi[val], zt[val]) if val else (float("nan"),) * 2
    val_share = phrased_share(model, h_img[0], h_txt[:, 0], h_names)
    metrics = {"caption_set": cfg.caption_set, "val_real_phrased_share": val_share, "val_top1": val_top1,
               "val_top5": val_top5, "heldout_concepts": len(h_names), "heldout_top1": top1, "heldout_top5": top5,
               "heldout_top1_blurred": top1_blur, "chance": 1 / len(h_names), "final_loss": loss.item(),
               "steps": cfg.max_steps}
    if cfg.export_dir:
        model.save_pretrained(cfg.export_dir)
        write_metrics(cfg.export_dir, metrics)
    return metrics
