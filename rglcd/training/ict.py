"""Improved consistency training (iCT, Song & Dhariwal 2023): a consistency model trained from data, no teacher.

`train/distill.py --method ict` comes here. Two settings:
- latent, text-conditioned (`--data emoji`, or shards / an image folder): a UNet2DConditionModel of the family
  teacher's architecture (`rglcd.training.teacher.build_unet`), random init, on the family's latents; exported as a
  UNet folder (+ the CMScheduler's config) and registered in the family file as kind `cm`, sampled through
  `Family.pipeline` (StableDiffusionPipeline + `rglcd.scheduling_cm.CMScheduler`);
- pixel, class-conditional (`--data fashion-mnist`): a small UNet2DModel (`rglcd.networks.build_class_unet`) on
  Fashion-MNIST padded to 32x32, exported as a UNet2DModel folder, scored by `rglcd.evaluate_fashion`.

The loss is `rglcd.objectives.ICTLoss` on the preconditioned network `rglcd.networks.CMDenoiser`; the grid size
N(k) comes from the global step passed to `train_step` (the same on every process); RAdam; an EMA copy of the weights
is kept for evaluation and export only (the loss's teacher is the online network under stop-gradient).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel

from rglcd.methods import ICT, get_method, sampler_class, trainer_methods
from rglcd.models import load_family, register_member, save_unet
from rglcd.networks import CMDenoiser, build_class_unet
from rglcd.objectives import ICTLoss
from rglcd.scheduling_cm import CMScheduler
from rglcd.training.checkpoints import StepCounter, step_generator
from rglcd.training.export import AUTO, RUNS, export_plan
from rglcd.training.loop import run_training
from rglcd.training.tracking import log_grids, make_accelerator


@dataclass
class ICTConfig:
    method: str = "ict"
    data: str = "emoji"  # 'emoji', a shard pattern or image folder (latents + text), or 'fashion-mnist' (pixels)
    family: str = "emoji-64"  # latent data: the family whose VAE, text encoder and teacher architecture are used
    member: str = "ict"  # the name the exported model gets in the family file
    output_dir: str = "runs/emoji-64/ict"
    export_dir: str | None = "auto"  # auto: runs/<family>/<member> (pixel data: runs/fashion-mnist/<member>)
    replace_shipped: bool = False  # allow exporting into assets/ (the shipped family) and registering there
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    dropout: float = 0.1
    batch_size: int = 64
    learning_rate: float = 2e-4
    max_steps: int = 6000  # K of the curriculum
    ema_decay: float = 0.999
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5  # the exported sampler (Family.pipeline) assumes the defaults of sigma_*, rho
    rho: float = 7.0
    p_mean: float = -1.1
    p_std: float = 2.0
    s0: int = 10
    s1: int = 1280
    loss_type: str = "huber"  # huber (pseudo-Huber, c = 0.00054 sqrt(d)) | l2 (squared error mean)
    huber_c: float | None = None
    noise_sampling: str = "lognormal"  # lognormal | uniform
    curriculum: bool = True  # False: `fixed_scales` grid points throughout
    fixed_scales: int = 1281
    cfg_dropout: float = 0.1  # latent data: empty caption with this probability (guidance at sampling)
    max_grad_norm: float = 0.0  # 0: no clipping (iCT clips nothing)
    mixed_precision: str | None = None
    report_to: str = "tensorboard"  # tensorboard | wandb | all | none
    export_dtype: str = "fp32"  # fp32 | fp16: the exported weights file (fp16 halves it; loading upcasts)
    checkpoint_every: int = 250
    eval_every: int = 1000  # 0: no evaluation
    eval_steps: tuple[int, ...] = (1, 2)
    eval_guidance: float = 1.0  # latent data: pipeline guidance scale (> 1: classifier-free guidance, 2 NFE a step)
    eval_images: int = 1000  # pixel data: images for the Frechet distance
    classifier: str | None = "assets/models/fashion-mnist/classifier"  # pixel data: FD features (None: no FD)
    seed: int = 0
    resume: str | None = "latest"
    stop_at: int | None = None
    resolution: int | None = None
    cache_latents: bool = False
    include_flags: bool = False
    limit_concepts: int | None = None
    fashion_mnist_dir: str | None = None  # folder of the idx files (default: the Debian package's)
    class_channels: tuple[int, ...] = (32, 64, 64)  # pixel UNet widths


def ict_loss(cfg: ICTConfig) -> ICTLoss:
    return ICTLoss(cfg.max_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.p_mean, cfg.p_std, cfg.s0, cfg.s1,
                   cfg.loss_type, cfg.noise_sampling, None if cfg.curriculum else cfg.fixed_scales, cfg.huber_c)


def train_ict(cfg: ICTConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Train (resuming when asked), export the EMA network and register it (latent data); return final metrics."""
    method = get_method(cfg.method)
    if method.trainer != "ict":
        raise ValueError(f"train_ict runs {', '.join(trainer_methods('ict'))}, got --method {cfg.method}")
    loss_fn = ict_loss(cfg)
    pixel = cfg.data == "fashion-mnist"
    family = None if pixel else load_family(cfg.family)
    pixel_export = f"{RUNS}/fashion-mnist/{cfg.member}" if pixel and cfg.export_dir == AUTO else cfg.export_dir
    export, registry = export_plan(pixel_export, family, cfg.member, cfg.replace_shipped)
    accelerator = accelerator or make_accelerator(cfg.report_to, cfg.output_dir, mixed_precision=cfg.mixed_precision)
    accelerator.init_trackers("ict", config={k: str(v) for k, v in asdict(cfg).items()})
    set_seed(cfg.seed)  # the same initialisation on every process and every fresh run
    rank, device = accelerator.process_index, accelerator.device
    batches = None
    if pixel:
        from rglcd.data.fashion_mnist import FashionMNISTBatches

        batches = FashionMNISTBatches("train", cfg.fashion_mnist_dir)
        unet = build_class_unet(cfg.class_channels, cfg.layers_per_block, dropout=cfg.dropout,
                                attention_head_dim=cfg.attention_head_dim)
    else:
        from rglcd.data.batches import training_batches
        from rglcd.training.teacher import TeacherConfig, build_unet

        sampler_class(method.kind)  # fail now, not at the first evaluation or after export
        batches = training_batches(cfg.data, family, cfg.resolution, cfg.cache_latents, cfg.include_flags,
                                   cfg.limit_concepts, rank, accelerator.num_processes)
        arch = TeacherConfig(block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                             attention_head_dim=cfg.attention_head_dim)
        config = build_unet(arch, batches.latent_shape[-1], batches.empty.shape[-1]).config
        unet = UNet2DConditionModel.from_config({**config, "dropout": cfg.dropout})

    def next_batch(g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """Clean samples (B,C,H,W) on the device and the UNet's conditioning keywords."""
        if pixel:
            x0, labels = batches.batch(cfg.batch_size, g)
            return x0.to(device), {"class_labels": labels.to(device)}
        z0, ctx, _ = batches.batch(cfg.batch_size, g, cfg.cfg_dropout)
        return z0.to(device), family.unet_inputs(unet, ctx.to(device))

    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    net = CMDenoiser(unet.train(), cfg.sigma_min, cfg.sigma_data)
    optimizer = torch.optim.RAdam(unet.parameters(), lr=cfg.learning_rate)
    net, optimizer = accelerator.prepare(net, optimizer)
    ema.to(device)
    counter = StepCounter()
    for state in (counter, ema) + ((batches,) if hasattr(batches, "consumed") else ()):
        accelerator.register_for_checkpointing(state)
    sampler = CMScheduler(cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, cfg.rho)

    def train_step(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step, rank)
        draw = loss_fn.draw(cfg.batch_size, step, g)  # N from the global step: the same on every process
        x0, cond = next_batch(g)
        noise = torch.randn(x0.shape, generator=g).to(device)
        with accelerator.autocast():
            loss = loss_fn(net, x0, noise, draw, **cond).mean()
        accelerator.backward(loss)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        return {"loss": accelerator.reduce(loss.detach(), "mean").item(), "num_scales": draw["num_scales"]}

    def ema_unet() -> torch.nn.Module:
        model = type(unet).from_config(unet.config)
        ema.copy_to(model.parameters())
        return model.to(device).eval()

    classifier = reference = reward = None

    def evaluate(step: int) -> dict[str, float]:
        nonlocal classifier, reference, reward
        model, out = ema_unet(), {}
        grid = Path(cfg.output_dir) / "samples" / f"step-{step}.png"
        if pixel:
            from rglcd.evaluate import save_grid
            from rglcd.evaluate_fashion import FD_NAME, fashion_reference, fashion_scores, sample_classes
            from rglcd.networks import FashionClassifier

            if classifier is None and cfg.classifier and Path(cfg.classifier).is_dir():
                classifier = FashionClassifier.from_pretrained(cfg.classifier).eval()
                reference = fashion_reference(classifier, cfg.fashion_mnist_dir)
            for n in cfg.eval_steps:
                images, _ = sample_classes(model, sampler, 80, n, cfg.seed)
                save_grid((images + 1) / 2, grid.with_name(f"{grid.stem}-{n}step.png"), nrow=10)
                if classifier is not None:
                    scores = fashion_scores(model, sampler, classifier, reference, n, cfg.eval_images, cfg.seed)
                    out.update({f"{n}step_fd": scores[FD_NAME], f"{n}step_class_accuracy": scores["class_accuracy"]})
            return out
        from rglcd.data.emoji import eval_prompt_sets
        from rglcd.evaluate import evaluate_prompt_following

        reward = reward or family.reward()
        for n in cfg.eval_steps:
            path = grid.with_name(f"{grid.stem}-{n}step.png")
            metrics = evaluate_prompt_following(family, cfg.member, reward, eval_prompt_sets(), n, cfg.eval_guidance,
                                                cfg.seed, path, unet=model, kind=ICT.kind)
            out.update({f"{n}step_{k}": v for k, v in metrics.items()})
            log_grids(accelerator, sorted(path.parent.glob(f"{path.stem}-*.png")), step)
        return out

    metrics = run_training(accelerator, counter, cfg.output_dir, cfg.max_steps, train_step,
                           evaluate if cfg.eval_every > 0 else None, cfg.resume, cfg.checkpoint_every,
                           max(cfg.eval_every, 1), stop_at=cfg.stop_at)
    if accelerator.is_main_process and export is not None and counter.step >= cfg.max_steps:
        final = ema_unet()
        save_unet(final, export, cfg.export_dtype)
        sampler.save_pretrained(export)
        metrics.update(steps=counter.step, params=sum(p.numel() for p in final.parameters()))
        (export / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if registry is not None:
            register_member(registry, cfg.member, export, kind=ICT.kind)
    accelerator.end_training()
    return metrics
