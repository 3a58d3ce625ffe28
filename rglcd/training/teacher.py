"""Train the emoji-64 teacher: a UNet2DConditionModel on 16x16x4 autoencoder latents, epsilon prediction.

SD's noise schedule (the family's scheduler: scaled_linear, 1000 steps), 10% empty-caption dropout for
classifier-free guidance, min-SNR loss weighting (gamma 5) and an EMA of the weights (`rglcd.training.ema`, with
diffusers' power warm-up), which is what gets exported. Latents and caption token states are precomputed once from
the family's frozen autoencoder and MiniLM text encoder, so a step is one UNet forward and backward. Flags are left
out of the teacher's data: fewer concepts, seen more often, on a CPU budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr

from rglcd.data.emoji import (emoji_training_tensors, eval_prompt_sets, first_phrasings, load_training_tensors,
                              sample_caption_batch)
from rglcd.evaluate import evaluate_prompt_following
from rglcd.files import write_metrics
from rglcd.inputs import MAX_SEED
from rglcd.models import EXPORT_DTYPES, Family, load_family, register_member, save_unet
from rglcd.training.checkpoints import StepCounter, choose_checkpoint, run_record, step_generator
from rglcd.training.ema import EMA
from rglcd.training.export import export_plan
from rglcd.training.global_batch import rank_rows
from rglcd.training.loop import run_training
from rglcd.training.settings import flat_values, setting
from rglcd.training.tracking import make_accelerator

TENSORS = "tensors:"  # data prefix of a precomputed training-tensor file


@dataclass
class TeacherConfig:
    """A teacher run: the UNet's architecture, the recipe, where it writes, how often it saves and evaluates."""

    family: str = setting("emoji-64", "the family whose autoencoder, text encoder and noise schedule the teacher "
                                      "is trained with: a name or a family file's folder")
    output_dir: str = setting("runs/emoji-64/teacher", "checkpoints, logs and evaluation grids")
    export_dir: str | None = setting("auto", "where the EMA UNet is exported; auto: runs/<family>/<member>, "
                                             "registered in runs/<family>/family.json; none: no export")
    member: str = setting("teacher", "the family member the exported teacher is registered as (another name keeps "
                                     "the family's teacher, e.g. for a fine-tune beside it)")
    replace_shipped: bool = setting(False, "allow exporting into assets/ (the shipped family) and registering there")
    block_out_channels: tuple[int, ...] = setting((32, 64, 128), "the UNet's channels per resolution level "
                                                                 "(cross-attention at every level but the first)",
                                                          low=1)
    layers_per_block: int = setting(1, "ResNet layers per UNet block", low=1)
    attention_head_dim: int = setting(8, "channels per attention head", low=1)
    batch_size: int = setting(64, "batch size per process", low=1)
    learning_rate: float = setting(1e-3, "AdamW learning rate (weight decay 0.01), the peak of the cosine schedule",
                                   low=0)
    warmup_steps: int = setting(200, "optimiser steps of linear learning-rate warm-up before the cosine decay", low=0)
    max_steps: int = setting(6500, "optimiser steps of the run; the EMA UNet is exported when it reaches them", low=1)
    cfg_dropout: float = setting(0.1, "probability of replacing a caption with the empty one (classifier-free "
                                      "guidance)", low=0, high=1)
    snr_gamma: float = setting(5.0, "min-SNR weighting: each sample's loss times min(SNR, gamma) / SNR "
                                    "(0: unweighted)", low=0)
    ema_decay: float = setting(0.999, "the exported EMA's decay, reached after its warm-up "
                                      "min(decay, 1 - (1 + n) ** (-2/3)) at step n", low=0, high=1)
    checkpoint_every: int = setting(250, "optimiser steps between checkpoints", low=1)
    eval_every: int = setting(1000, "steps between evaluations of the EMA UNet (prompt following: needs the "
                                    "family's reward and text encoder); 0: none", low=0)
    eval_steps: int = setting(25, "the teacher's sampling steps in evaluation", low=1)
    eval_guidance: float = setting(5.0, "pipeline guidance scale in evaluation", low=0)
    seed: int = setting(0, "seed of the initialisation and of every batch draw", low=0, high=MAX_SEED)
    resume: str | None = setting("latest", "latest | a checkpoint folder | none (start afresh)")
    stop_at: int | None = setting(None, "stop (after a checkpoint) at this step; run again to go on", low=1)
    include_flags: bool = setting(False, "emoji data: include the flag emoji")
    limit_concepts: int | None = setting(None, "emoji data: train on the first this many concepts only", low=1)
    phrasings: int | None = setting(None, "emoji data: draw captions from the first this many training phrasings "
                                          "(4: the original templates, the first stage of the shipped teacher); "
                                          "none: all of --captions", low=1)
    captions: str = setting("templates", "emoji data: the training caption set, templates (12 phrasings) | wide (48) | "
                                         "words (64 a concept: wide and 16 with an unrelated word; "
                                         "rglcd.data.emoji.CAPTION_SETS)")
    export_dtype: str = setting("fp32", "fp32 | fp16: the exported weights file (fp16 halves it; loading upcasts)",
                                choices=EXPORT_DTYPES)
    data: str = setting("emoji", f"emoji (renders encoded with the family's VAE and text encoder) | {TENSORS}PATH "
                                 "(a precomputed training-tensor file)")
    init_unet: str | None = setting(None, "start from this UNet folder (a fine-tune) instead of random weights of "
                                          "the sizes above")


def build_unet(cfg: TeacherConfig, sample_size: int, context_dim: int) -> UNet2DConditionModel:
    """A randomly initialised teacher UNet of `cfg`'s architecture on 4-channel latents of side `sample_size`,
    cross-attending to text states of size `context_dim`."""
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=context_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
    )


def teacher_data(cfg: TeacherConfig, family: Family, device: torch.device) -> dict[str, Any]:
    """The training tensors (`rglcd.data.emoji.emoji_training_tensors`: latents, caption states, ...) on `device`."""
    if cfg.data == "emoji":
        data = emoji_training_tensors(family, cfg.include_flags, cfg.limit_concepts, cfg.captions)
    elif cfg.captions != "templates":
        raise ValueError("--captions applies to the emoji data only (a tensors: file holds its own captions)")
    elif cfg.data.startswith(TENSORS):
        data = load_training_tensors(cfg.data[len(TENSORS):])
    else:
        raise ValueError(f"unknown teacher data {cfg.data!r}: use emoji or {TENSORS}PATH")
    data = first_phrasings(data, cfg.phrasings)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}


@dataclass
class TrainStep:
    """`run_training`'s step: a caption batch, noise and timesteps of the global batch from the step's generator
    (the same on every process, each keeping its rows, `rglcd.training.global_batch`; a resumed run draws the
    same), the min-SNR weighted epsilon loss, the optimiser and LR steps, the EMA update. Returns 0-d tensors (no
    host sync; means over processes) and the learning rate."""

    accelerator: Accelerator
    unet: torch.nn.Module
    noise_scheduler: DDPMScheduler
    optimizer: Any
    lr_scheduler: Any
    ema: EMA
    data: dict[str, Any]
    cfg: TeacherConfig

    def __call__(self, step: int) -> dict[str, torch.Tensor | float]:
        cfg, device = self.cfg, self.accelerator.device
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        n, g = cfg.batch_size * world, step_generator(cfg.seed, step)
        z0, ctx, _ = sample_caption_batch(self.data, n, g, cfg.cfg_dropout)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,), generator=g)
        z0, ctx, noise, t = (rank_rows(x, rank, world) for x in (z0, ctx, noise, t))
        noise = noise.to(device)
        zt = self.noise_scheduler.add_noise(z0, noise, t.to(device))
        pred = self.unet(zt, t.to(device), ctx).sample
        mse = F.mse_loss(pred.float(), noise.to(device), reduction="none").mean((1, 2, 3))
        snr = compute_snr(self.noise_scheduler, t)
        weight = torch.clamp(snr, max=cfg.snr_gamma) / snr if cfg.snr_gamma > 0 else torch.ones_like(snr)
        loss = (mse * weight.to(device)).mean()
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.accelerator.unwrap_model(self.unet).parameters())
        means = self.accelerator.reduce({"loss": loss.detach(), "mse": mse.mean().detach()}, "mean")  # all processes
        return means | {"lr": self.lr_scheduler.get_last_lr()[0]}


@dataclass
class Validation:
    """Prompt following of the EMA UNet on the emoji validation prompts, and its sample grids."""

    cfg: TeacherConfig
    family: Family
    ema: EMA
    unet: torch.nn.Module
    reward: torch.nn.Module | None = None

    def __call__(self, step: int) -> dict[str, float]:
        self.reward = self.reward or self.family.reward()
        grid = Path(self.cfg.output_dir) / "samples" / f"step-{step}.png"
        return evaluate_prompt_following(self.family, "teacher", self.reward, eval_prompt_sets(), self.cfg.eval_steps,
                                         self.cfg.eval_guidance, self.cfg.seed, grid, unet=self.ema.averaged(self.unet))


def train_teacher(cfg: TeacherConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Train (resuming when asked), export the EMA UNet to `cfg.export_dir`, return final metrics."""
    family = load_family(cfg.family)
    accelerator = accelerator or make_accelerator("tensorboard", cfg.output_dir)
    record = run_record(cfg, accelerator)
    resume = choose_checkpoint(cfg.output_dir, cfg.resume, record, accelerator.print)  # before anything is written
    export, registry = export_plan(cfg.export_dir, family, cfg.member, cfg.replace_shipped,
                                   write=accelerator.is_main_process)
    accelerator.init_trackers("teacher", config={k: str(v) for k, v in flat_values(cfg).items()})
    with accelerator.main_process_first():  # it fills the data caches (renders, encodings) the others then read
        data = teacher_data(cfg, family, accelerator.device)
    latents, context = data["latents"], data["context"]
    torch.manual_seed(cfg.seed)
    unet = (UNet2DConditionModel.from_pretrained(cfg.init_unet) if cfg.init_unet
            else build_unet(cfg, latents.shape[-1], context.shape[-1]))
    ema = EMA(unet.parameters(), cfg.ema_decay, warmup="power").to(accelerator.device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    # accelerate steps a prepared schedule once per process each optimiser step (as if the batch grew with them)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.max_steps * accelerator.num_processes)
    prepared, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    accelerator.register_for_checkpointing(ema)
    step = TrainStep(accelerator, prepared, DDPMScheduler.from_config(family.scheduler_config), optimizer,
                     lr_scheduler, ema, data, cfg)
    validation = Validation(cfg, family, ema, unet)
    metrics = run_training(accelerator, counter, cfg.output_dir, cfg.max_steps, step,
                           validation if cfg.eval_every > 0 else None, resume, cfg.checkpoint_every,
                           max(cfg.eval_every, 1), stop_at=cfg.stop_at, settings=record)
    if accelerator.is_main_process and export is not None and counter.step >= cfg.max_steps:
        final = ema.averaged(unet)
        save_unet(final, export, cfg.export_dtype)
        metrics.update(steps=counter.step, params=sum(p.numel() for p in final.parameters()),
                       concepts=len(latents))
        write_metrics(export, metrics)
        register_member(registry, cfg.member, export, kind="teacher")
    accelerator.end_training()
    return metrics
