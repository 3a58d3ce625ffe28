"""Train the emoji-64 teacher: a UNet2DConditionModel on 16x16x4 autoencoder latents, epsilon prediction.

SD's noise schedule (scaled_linear, 1000 steps), 10% empty-caption dropout for classifier-free guidance, min-SNR
loss weighting (gamma 5) and an EMA of the weights, which is what gets exported. Latents and caption token states
are precomputed once from the family's frozen autoencoder and MiniLM text encoder, so a step is one UNet forward and
backward. Flags are left out of the teacher's data: fewer concepts, seen more often, on a CPU budget.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from rglcd.data.emoji import emoji_training_tensors, eval_prompt_sets, load_training_tensors, sample_caption_batch
from rglcd.evaluate import evaluate_prompt_following
from rglcd.models import load_family, register_member, save_unet
from rglcd.training.checkpoints import StepCounter, step_generator
from rglcd.training.export import export_plan
from rglcd.training.loop import run_training

SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "prediction_type": "epsilon", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
               "timestep_spacing": "leading"}


@dataclass
class TeacherConfig:
    family: str = "emoji-64"
    output_dir: str = "runs/emoji-64/teacher"
    export_dir: str | None = "auto"  # auto: runs/<family>/teacher, registered in runs/<family>/family.json
    replace_shipped: bool = False  # allow exporting into assets/ (the shipped family) and registering there
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    max_steps: int = 6500
    cfg_dropout: float = 0.1
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    eval_every: int = 1000  # 0: no evaluation (prompt following needs the family's reward and text encoder)
    eval_steps: int = 25
    eval_guidance: float = 5.0
    seed: int = 0
    resume: str | None = "latest"
    stop_at: int | None = None  # end this session at this step (checkpointed); resume later
    include_flags: bool = False
    limit_concepts: int | None = None  # tests: train on the first N concepts only
    export_dtype: str = "fp32"  # fp32 | fp16: the exported weights file (fp16 halves it; loading upcasts)
    data: str = "emoji"  # emoji (renders encoded with the family's VAE and text encoder) | tensors:PATH (precomputed)
    init_unet: str | None = None  # start from this UNet folder (a fine-tune) instead of random weights of the sizes above


def build_unet(cfg: TeacherConfig, sample_size: int, context_dim: int) -> UNet2DConditionModel:
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=context_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
    )


def train_teacher(cfg: TeacherConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Train (resuming when asked), export the EMA UNet to `cfg.export_dir`, return final metrics."""
    family = load_family(cfg.family)
    export, registry = export_plan(cfg.export_dir, family, "teacher", cfg.replace_shipped)
    accelerator = accelerator or Accelerator(log_with="tensorboard", project_dir=cfg.output_dir)
    accelerator.init_trackers("teacher", config={k: str(v) for k, v in asdict(cfg).items()})
    if cfg.data == "emoji":
        data = emoji_training_tensors(family, cfg.include_flags, cfg.limit_concepts)
    elif cfg.data.startswith("tensors:"):
        data = load_training_tensors(cfg.data[len("tensors:"):])
    else:
        raise ValueError(f"unknown teacher data {cfg.data!r}: use emoji or tensors:PATH")
    data = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    latents, context = data["latents"], data["context"]
    noise_scheduler = DDPMScheduler.from_config(family.scheduler_config)

    torch.manual_seed(cfg.seed)
    unet = (UNet2DConditionModel.from_pretrained(cfg.init_unet) if cfg.init_unet
            else build_unet(cfg, latents.shape[-1], context.shape[-1]))
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, model_cls=UNet2DConditionModel,
                   model_config=unet.config)
    ema.to(accelerator.device)  # its shadow weights live where the training UNet will
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.max_steps)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    accelerator.register_for_checkpointing(ema)
    rank, device = accelerator.process_index, accelerator.device
    reward = None

    def train_step(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step, rank)
        z0, ctx, _ = sample_caption_batch(data, cfg.batch_size, g, cfg.cfg_dropout)
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        zt = noise_scheduler.add_noise(z0, noise, t.to(device))
        pred = unet(zt, t.to(device), ctx).sample
        mse = F.mse_loss(pred.float(), noise.to(device), reduction="none").mean((1, 2, 3))
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=cfg.snr_gamma) / snr if cfg.snr_gamma > 0 else torch.ones_like(snr)
        loss = (mse * weight.to(device)).mean()
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(unet).parameters())
        return {"loss": loss.item(), "mse": mse.mean().item(), "lr": lr_scheduler.get_last_lr()[0]}

    def ema_unet() -> UNet2DConditionModel:
        model = UNet2DConditionModel.from_config(accelerator.unwrap_model(unet).config)
        ema.copy_to(model.parameters())
        return model.eval()

    def evaluate(step: int) -> dict[str, float]:
        nonlocal reward
        if reward is None:
            reward = family.reward()
        grid = Path(cfg.output_dir) / "samples" / f"step-{step}.png"
        return evaluate_prompt_following(family, "teacher", reward, eval_prompt_sets(), cfg.eval_steps,
                                         cfg.eval_guidance, cfg.seed, grid, unet=ema_unet())

    metrics = run_training(accelerator, counter, cfg.output_dir, cfg.max_steps, train_step,
                           evaluate if cfg.eval_every > 0 else None, cfg.resume, cfg.checkpoint_every,
                           max(cfg.eval_every, 1), stop_at=cfg.stop_at)
    if accelerator.is_main_process and export is not None and counter.step >= cfg.max_steps:
        final = ema_unet()
        save_unet(final, export, cfg.export_dtype)
        metrics.update(steps=counter.step, params=sum(p.numel() for p in final.parameters()),
                       concepts=len(latents))
        (export / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        register_member(registry, "teacher", export, kind="teacher")
    accelerator.end_training()
    return metrics
