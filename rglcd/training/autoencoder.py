"""Train the emoji-64 autoencoder: a diffusers AutoencoderTiny, 64x64x3 pixels <-> 16x16x4 latents (f=4).

Why AutoencoderTiny: no normalisation layers and ReLU convolutions make it about 6x faster per step on this CPU
than an AutoencoderKL of similar width (0.37 s vs 2.3 s per batch of 32), and StableDiffusionPipeline accepts it as
its `vae`. Loss: L1 + MSE in pixel space. At export the latents are centred (`recenter_latents`) and the scaling
factor (1 / std of training latents) is written into the config, so the UNet sees zero-mean, unit-variance latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderTiny
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from rglcd.data.emoji import augment, load_renders, to_model_range
from rglcd.files import write_metrics
from rglcd.inputs import MAX_SEED
from rglcd.training.checkpoints import StepCounter, choose_checkpoint, run_record, step_generator
from rglcd.training.export import refuse_shipped
from rglcd.training.loop import run_training
from rglcd.training.settings import flat_values, setting
from rglcd.training.tracking import require_one_process


@dataclass
class AutoencoderConfig:
    """An autoencoder run: the AutoencoderTiny's shape, the recipe, the export's latent centring."""

    output_dir: str = setting("runs/emoji-64/autoencoder", "checkpoints and logs")
    export_dir: str | None = setting("runs/emoji-64/vae", "where the AutoencoderTiny folder is exported; none: no "
                                                          "export")
    replace_shipped: bool = setting(False, "allow exporting into assets/ (the shipped family's vae)")
    channels: int = setting(32, "channels of every encoder and decoder level", low=1)
    encoder_blocks: tuple[int, ...] = setting((1, 2, 2), "encoder blocks per level; each level after the first "
                                                         "halves the resolution (3 levels: f=4)", low=1)
    decoder_blocks: tuple[int, ...] = setting((2, 2, 1), "decoder blocks per level; each level but the last "
                                                         "doubles the resolution", low=1)
    latent_channels: int = setting(4, "channels of the latents", low=1)
    batch_size: int = setting(32, "batch size per process (augmented emoji renders)", low=1)
    learning_rate: float = setting(2e-3, "AdamW learning rate, the peak of the cosine schedule", low=0)
    warmup_steps: int = setting(100, "optimiser steps of linear learning-rate warm-up before the cosine decay", low=0)
    max_steps: int = setting(4000, "optimiser steps of the run; the autoencoder is exported when it reaches them",
                             low=1)
    checkpoint_every: int = setting(250, "optimiser steps between checkpoints", low=1)
    eval_every: int = setting(250, "steps between held-out reconstruction PSNR evaluations", low=0)
    seed: int = setting(0, "seed of the initialisation and of every batch draw", low=0, high=MAX_SEED)
    resume: str | None = setting("latest", "latest | a checkpoint folder | none (start afresh)")
    stop_at: int | None = setting(None, "stop (after a checkpoint) at this step; run again to go on", low=1)
    recenter_steps: int = setting(400, "at export: decoder fine-tune steps after centring the latents per channel "
                                       "(0: keep the raw latents)", low=0)
    recenter_lr: float = setting(5e-4, "AdamW learning rate of the decoder fine-tune after centring", low=0)
    limit_concepts: int | None = setting(None, "train and evaluate on the first this many concepts of each split "
                                               "only", low=1)


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderTiny:
    n = len(cfg.encoder_blocks)
    return AutoencoderTiny(
        encoder_block_out_channels=(cfg.channels,) * n,
        decoder_block_out_channels=(cfg.channels,) * n,
        num_encoder_blocks=tuple(cfg.encoder_blocks),
        num_decoder_blocks=tuple(cfg.decoder_blocks),
        latent_channels=cfg.latent_channels,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1,1] (B,3,H,W), measured on the [0,1] scale."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderTiny, images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean PSNR (dB) of vae reconstructions of uint8 images (N,3,H,W)."""
    vals = []
    for chunk in images.split(batch_size):
        x = to_model_range(chunk)
        vals.append(psnr(vae.decode(vae.encode(x).latents).sample, x))
    return torch.cat(vals).mean().item()


@torch.no_grad()
def latent_mean(vae: AutoencoderTiny, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Per-channel mean (C,) of the raw latents of uint8 images (N,3,H,W)."""
    return torch.cat([vae.encode(to_model_range(c)).latents for c in images.split(batch_size)]).mean((0, 2, 3))


def recenter_latents(vae: AutoencoderTiny, train_images: torch.Tensor, cfg: AutoencoderConfig) -> torch.Tensor:
    """Make the latents zero-mean per channel, in place, and return the mean that was removed (C,).

    Why: emoji latents have large per-channel means (the white background); an epsilon-prediction UNet on SD's
    schedule barely learns to move the global mean, so samples came out colour-shifted. StableDiffusionPipeline
    applies only `scaling_factor`, so the shift is folded into the weights: the encoder's last bias subtracts it,
    the decoder's first bias adds it back, and a short decoder-only fine-tune repairs what the border padding and
    the decoder's input tanh make inexact.
    """
    mean = latent_mean(vae, train_images[:512])
    enc_out, dec_in = vae.encoder.layers[-1], vae.decoder.layers[0]
    with torch.no_grad():
        enc_out.bias -= mean
        dec_in.bias += dec_in.weight.sum((2, 3)) @ mean
    vae.encoder.requires_grad_(False)
    params = [p for p in vae.decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.recenter_lr, weight_decay=0.0)
    vae.train()
    for step in tqdm(range(cfg.recenter_steps), desc="recentre decoder"):
        g = step_generator(cfg.seed + 1, step)
        x = augment(to_model_range(train_images[torch.randint(len(train_images), (cfg.batch_size,), generator=g)]), g)
        with torch.no_grad():
            z = vae.encode(x).latents
        recon = vae.decode(z).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    vae.encoder.requires_grad_(True)
    return mean


@torch.no_grad()
def latent_std(vae: AutoencoderTiny, images: torch.Tensor, batch_size: int = 64) -> float:
    """Standard deviation of the raw latents of uint8 images (N,3,H,W)."""
    z = torch.cat([vae.encode(to_model_range(c)).latents for c in images.split(batch_size)])
    return z.std().item()


def train_autoencoder(cfg: AutoencoderConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Train (resuming from `cfg.output_dir` when asked), export to `cfg.export_dir`, return final metrics."""
    require_one_process("train/autoencoder.py")
    if cfg.export_dir:
        refuse_shipped(cfg.export_dir, cfg.replace_shipped)
    accelerator = accelerator or Accelerator(log_with="tensorboard", project_dir=cfg.output_dir)
    record = run_record(cfg, accelerator)
    resume = choose_checkpoint(cfg.output_dir, cfg.resume, record, accelerator.print)  # before anything is written
    accelerator.init_trackers("autoencoder", config={k: str(v) for k, v in flat_values(cfg).items()})
    _, train_images = load_renders("train")
    _, held_images = load_renders("heldout")
    if cfg.limit_concepts:
        train_images, held_images = train_images[: cfg.limit_concepts], held_images[: cfg.limit_concepts]

    torch.manual_seed(cfg.seed)
    vae = build_autoencoder(cfg)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    vae, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    rank = accelerator.process_index

    def train_step(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step, rank)
        idx = torch.randint(len(train_images), (cfg.batch_size,), generator=g)
        x = augment(to_model_range(train_images[idx]), g).to(accelerator.device)
        model = accelerator.unwrap_model(vae)
        recon = model.decode(model.encode(x).latents).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), "lr": lr_scheduler.get_last_lr()[0]}

    def evaluate(step: int) -> dict[str, float]:
        model = accelerator.unwrap_model(vae).eval()
        out = {"psnr_heldout": reconstruction_psnr(model, held_images)}
        model.train()
        return out

    metrics = run_training(accelerator, counter, cfg.output_dir, cfg.max_steps, train_step, evaluate,
                           resume, cfg.checkpoint_every, cfg.eval_every, stop_at=cfg.stop_at, settings=record)
    model = accelerator.unwrap_model(vae).eval()
    if accelerator.is_main_process and cfg.export_dir and counter.step >= cfg.max_steps:
        if cfg.recenter_steps > 0:
            removed = recenter_latents(model, train_images, cfg)
            model.eval()
            metrics.update(removed_latent_mean=removed.tolist(),
                           psnr_heldout=reconstruction_psnr(model, held_images),
                           residual_latent_mean=latent_mean(model, train_images[:512]).abs().max().item())
        std = latent_std(model, train_images[:512])
        model.register_to_config(scaling_factor=1.0 / std)
        export = Path(cfg.export_dir)
        model.save_pretrained(export)
        metrics.update(latent_std=std, scaling_factor=1.0 / std, steps=counter.step)
        write_metrics(export, {k: round(v, 4) if isinstance(v, float) and math.isfinite(v) else v
                               for k, v in metrics.items()})
    accelerator.end_training()
    return metrics
