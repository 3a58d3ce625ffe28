"""Improved consistency training (iCT, Song & Dhariwal 2023): a consistency model trained from data, no teacher.

`train/distill.py --method ict` comes here. Two settings:
- latent, text-conditioned (`--data emoji`, or shards / an image folder): a UNet2DConditionModel of the family
  teacher's architecture (`rglcd.training.teacher.build_unet`), random init, on the family's latents; exported as a
  UNet folder (+ the CMScheduler's config) and registered in the family file as kind `cm`, sampled through
  `Family.pipeline` (StableDiffusionPipeline + `rglcd.scheduling_cm.CMScheduler`);
- pixel, class-conditional (`--data fashion-mnist`): a small UNet2DModel (`rglcd.networks.build_class_unet`) on
  Fashion-MNIST padded to 32x32, exported as a UNet2DModel folder, scored by `rglcd.evaluate_fashion`.

The loss is `rglcd.objectives.ICTLoss` on the preconditioned network `rglcd.networks.CMDenoiser`; one optimiser step
is `ict_step` (the trainer and `bench/train_throughput.py` both run it); the grid size N(k) comes from the global
step (the same on every process); RAdam; an EMA copy of the weights is kept for evaluation and export only (the
loss's teacher is the online network under stop-gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from diffusers import UNet2DConditionModel

from rglcd.consistency import LOSS_TYPES
from rglcd.data.batches import check_data_source, training_batches
from rglcd.data.emoji import eval_prompt_sets
from rglcd.data.fashion_mnist import FashionMNISTBatches
from rglcd.data.stream import StreamOptions
from rglcd.evaluate import evaluate_prompt_following
from rglcd.evaluate_fashion import FD_NAME, fashion_reference, fashion_scores, sample_classes
from rglcd.files import write_metrics
from rglcd.images import save_grid
from rglcd.methods import ICT, Trainer, get_method, method_help, trainer_methods
from rglcd.inputs import MAX_SEED
from rglcd.samplers import sampler_class
from rglcd.models import EXPORT_DTYPES, Family, load_family, register_member, save_unet
from rglcd.networks import CMDenoiser, FashionClassifier, build_class_unet
from rglcd.objectives import NOISE_SAMPLINGS, ConsistencyBatch, ICTLoss
from rglcd.scheduling_cm import CMScheduler
from rglcd.training.checkpoints import StepCounter, choose_checkpoint, run_record, step_generator
from rglcd.training.ema import EMA
from rglcd.training.export import AUTO, RUNS, export_plan, refuse_shipped
from rglcd.training.global_batch import data_generator, local_samples, share_of, share_rows
from rglcd.training.loop import run_training
from rglcd.training.settings import flat_values, setting
from rglcd.training.teacher import TeacherConfig, build_unet
from rglcd.training.tracking import REPORT_TO, log_grids, make_accelerator, process_state

FASHION = "fashion-mnist"  # the pixel, class-conditional data


@dataclass
class ICTConfig:
    """An iCT run: data and network, the consistency-training recipe, where it writes, how often it saves and
    evaluates."""

    method: str = setting("ict", method_help(Trainer.ICT), choices=trainer_methods(Trainer.ICT))
    data: str = setting("emoji", "emoji, a webdataset shard pattern or an image folder (the family's latents and "
                                 f"caption states) | {FASHION} (pixels, class-conditional)")
    family: str = setting("emoji-64", "latent data: the family whose VAE, text encoder and teacher architecture "
                                      "are used")
    member: str = setting("ict", "the name the exported model gets in the family file")
    output_dir: str = setting("runs/emoji-64/ict", "checkpoints, logs and evaluation grids")
    export_dir: str | None = setting(AUTO, "where the EMA network is exported; auto: runs/<family>/<member> "
                                           f"(pixel data: runs/{FASHION}/<member>), registered in "
                                           "runs/<family>/family.json; none: no export")
    replace_shipped: bool = setting(False, "allow exporting into assets/ (the shipped family) and registering there")
    block_out_channels: tuple[int, ...] = setting((32, 64, 128), "latent data: the UNet's channels per resolution "
                                                                 "level (the family teacher's architecture)", low=1)
    layers_per_block: int = setting(1, "ResNet layers per UNet block", low=1)
    attention_head_dim: int = setting(8, "channels per attention head", low=1)
    dropout: float = setting(0.1, "dropout probability in the UNet's ResNet blocks (the loss's two forwards share "
                                  "the masks)", low=0, high=1)
    batch_size: int = setting(64, "batch size per process", low=1)
    learning_rate: float = setting(2e-4, "RAdam learning rate (constant)", low=0)
    max_steps: int = setting(6000, "optimiser steps of the run (K of the curriculum); the EMA network is exported "
                                   "when it reaches them", low=1)
    ema_decay: float = setting(0.999, "the EMA copy's decay, reached after its warm-up min(decay, (1+n)/(10+n)) "
                                      "at step n", low=0, high=1)
    sigma_min: float = setting(0.002, "smallest noise level of the Karras grid (the exported sampler assumes the "
                                      "defaults of sigma_min, sigma_max, sigma_data and rho)", low=0)
    sigma_max: float = setting(80.0, "largest noise level of the Karras grid", low=0)
    sigma_data: float = setting(0.5, "the data's standard deviation in the consistency scalings c_skip, c_out, c_in",
                                low=0)
    rho: float = setting(7.0, "the Karras grid's exponent")
    p_mean: float = setting(-1.1, "lognormal noise sampling: the mean of log sigma")
    p_std: float = setting(2.0, "lognormal noise sampling: the standard deviation of log sigma", low=0)
    s0: int = setting(10, "curriculum: grid intervals at the start (N = s0 + 1 points)", low=1)
    s1: int = setting(1280, "curriculum: grid intervals at the end (N doubles in equal stages from s0 to s1)", low=1)
    loss_type: str = setting("huber", "huber (pseudo-Huber, c = 0.00054 sqrt(d), d the sample's size) | l2 "
                                      "(squared error mean, the original CT's)", choices=LOSS_TYPES)
    huber_c: float | None = setting(None, "the pseudo-Huber distance's c (default: 0.00054 sqrt(d))", low=0)
    noise_sampling: str = setting("lognormal", "how a step's grid interval is drawn: lognormal (discretised, iCT) "
                                               "| uniform (CT)", choices=NOISE_SAMPLINGS)
    curriculum: bool = setting(True, "grow the grid from s0 to s1 intervals over the run; false: --fixed-scales "
                                     "points throughout")
    fixed_scales: int = setting(1281, "grid points N of every step when --curriculum false", low=2)
    cfg_dropout: float = setting(0.1, "latent data: probability of replacing a caption with the empty one "
                                      "(guidance at sampling)", low=0, high=1)
    max_grad_norm: float = setting(0.0, "clip the gradient norm to this (0: no clipping; iCT clips nothing)", low=0)
    mixed_precision: str | None = setting(None, "no | bf16 | fp16; none: what `accelerate launch` was given",
                                          choices=("no", "bf16", "fp16"))
    report_to: str = setting("tensorboard", " | ".join(REPORT_TO), choices=REPORT_TO)
    export_dtype: str = setting("fp32", "fp32 | fp16: the exported weights file (fp16 halves it; loading upcasts)",
                                choices=EXPORT_DTYPES)
    checkpoint_every: int = setting(250, "optimiser steps between checkpoints", low=1)
    eval_every: int = setting(1000, "steps between evaluations of the EMA network (grids and scores); 0: none", low=0)
    eval_steps: tuple[int, ...] = setting((1, 2), "the sampling step counts evaluated, one grid and score set each",
                                          low=1)
    eval_guidance: float = setting(1.0, "latent data: pipeline guidance scale in evaluation (> 1: classifier-free "
                                        "guidance, 2 UNet calls a step)", low=0)
    eval_images: int = setting(1000, "pixel data: generated images per Frechet distance", low=1)
    classifier: str | None = setting(f"assets/models/{FASHION}/classifier", "pixel data: the Fashion-MNIST "
                                     "classifier folder whose features the Frechet distance uses (none: no FD)")
    seed: int = setting(0, "seed of the initialisation and of every batch draw", low=0, high=MAX_SEED)
    resume: str | None = setting("latest", "latest | a checkpoint folder | none (start afresh)")
    stop_at: int | None = setting(None, "stop (after a checkpoint) at this step; run again to go on", low=1)
    resolution: int | None = setting(None, "training image size for shard / folder data (default: the family's)", low=1)
    cache_latents: bool = setting(False, "encode shard / folder data once into a cache of latents and text states")
    include_flags: bool = setting(False, "emoji data: include the flag emoji")
    limit_concepts: int | None = setting(None, "emoji data: train on the first this many concepts only", low=1)
    fashion_mnist_dir: str | None = setting(None, "pixel data: folder of the idx files (default: the Debian "
                                                  "package dataset-fashion-mnist's)")
    class_channels: tuple[int, ...] = setting((32, 64, 64), "pixel data: the class-conditional UNet's channels per "
                                                            "resolution level", low=1)


def ict_loss(cfg: ICTConfig) -> ICTLoss:
    """The iCT objective of `cfg` (curriculum over `max_steps`, or `fixed_scales` points)."""
    return get_method(cfg.method).objective(cfg.max_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.p_mean, cfg.p_std, cfg.s0, cfg.s1,
                   cfg.loss_type, cfg.noise_sampling, None if cfg.curriculum else cfg.fixed_scales, cfg.huber_c)


def ict_data(cfg: ICTConfig, family: Family | None, accelerator: Accelerator | PartialState) -> Any:
    """This process's training batches: Fashion-MNIST (`family` None) or the family's latents and caption states
    (streamed shards and folders: the stream's default mode, buffer and workers, seeded by `--seed`)."""
    if family is None:
        return FashionMNISTBatches("train", cfg.fashion_mnist_dir)
    return training_batches(cfg.data, family, cfg.resolution, cfg.cache_latents, cfg.include_flags,
                            cfg.limit_concepts, accelerator.process_index, accelerator.num_processes,
                            stream=StreamOptions(seed=cfg.seed))


def ict_unet(cfg: ICTConfig, family: Family | None, batches: Any) -> torch.nn.Module:
    """The randomly initialised network: the pixel class-conditional UNet2DModel (`family` None), or a
    UNet2DConditionModel of the family teacher's architecture sized to the latents and caption states."""
    if family is None:
        return build_class_unet(cfg.class_channels, cfg.layers_per_block, dropout=cfg.dropout,
                                attention_head_dim=cfg.attention_head_dim)
    arch = TeacherConfig(block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                         attention_head_dim=cfg.attention_head_dim)
    config = build_unet(arch, batches.latent_shape[-1], batches.empty.shape[-1]).config
    # a keyword: from_config drops the config's keys that were defaults when it was made (`_use_default_values`),
    # so `{**config, "dropout": p}` would silently keep dropout 0
    return UNet2DConditionModel.from_config(config, dropout=cfg.dropout)


@dataclass
class ICTStep:
    """What one iCT optimiser step touches: the objective, the prepared consistency network `net` (a `CMDenoiser`
    of `unet`), its optimiser, and the EMA of `unet`'s weights."""

    accelerator: Accelerator
    objective: ICTLoss
    net: torch.nn.Module
    unet: torch.nn.Module
    optimizer: Any
    ema: EMA
    max_grad_norm: float = 0.0


def ict_step(parts: ICTStep, batch: ConsistencyBatch) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch (clean samples, noise, the objective's draw, the UNet's conditioning), then the
    EMA update. Returns {'loss': 0-d tensor, the mean over the batch and processes} (no host sync)."""
    accelerator = parts.accelerator
    with accelerator.autocast():
        loss = parts.objective.batch_loss(parts.net, None, parts.net, batch)[0].mean()
    accelerator.backward(loss)
    if parts.max_grad_norm > 0:
        accelerator.clip_grad_norm_(parts.unet.parameters(), parts.max_grad_norm)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.ema.update(parts.unet.parameters())
    return {"loss": accelerator.reduce(loss.detach(), "mean")}


def ict_parts(cfg: ICTConfig, objective: ICTLoss, unet: torch.nn.Module, accelerator: Accelerator) -> ICTStep:
    """`objective`'s step on `unet`: its EMA, its `CMDenoiser` and RAdam prepared by `accelerator`."""
    ema = EMA(unet.parameters(), cfg.ema_decay, warmup="ratio")
    net = CMDenoiser(unet.train(), cfg.sigma_min, cfg.sigma_data)
    optimizer = torch.optim.RAdam(unet.parameters(), lr=cfg.learning_rate)
    net, optimizer = accelerator.prepare(net, optimizer)
    ema.to(accelerator.device)
    return ICTStep(accelerator, objective, net, unet, optimizer, ema, cfg.max_grad_norm)


@dataclass
class BatchDraw:
    """This process's rows of one global batch of `batch_size` x `world` from a generator
    (`rglcd.training.global_batch`; a stream split across processes: its own samples, drawn with `own`): clean
    samples (B,C,H,W) on the device and the UNet's conditioning keywords (pixel data, `family` None: class labels;
    latent data: the family's, from caption states with dropout)."""

    batches: Any
    batch_size: int
    device: torch.device
    family: Family | None = None
    unet: torch.nn.Module | None = None
    cfg_dropout: float = 0.0
    rank: int = 0
    world: int = 1

    def __call__(self, g: torch.Generator, own: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        n = self.batch_size * self.world
        if self.family is None:
            x0, labels = self.batches.batch(n, g)
            return self.mine(x0).to(self.device), {"class_labels": self.mine(labels).to(self.device)}
        if local_samples(self.batches):
            z0, ctx, _ = self.batches.batch(self.batch_size, own or g, self.cfg_dropout)
        else:
            z0, ctx, _ = self.batches.batch(n, g, self.cfg_dropout)
        return self.mine(z0).to(self.device), self.family.unet_inputs(self.unet, self.mine(ctx).to(self.device))

    def mine(self, rows: torch.Tensor) -> torch.Tensor:
        return share_rows(rows, self.rank, self.world, self.batch_size * self.world)


@dataclass
class TrainStep:
    """`run_training`'s step: the objective's draw (N from the global step), a batch and noise, all of the global
    batch from the step's generator (the same on every process, so a resumed run draws the same; each process keeps
    its rows), then `ict_step`."""

    parts: ICTStep
    draw: BatchDraw
    seed: int

    def __call__(self, step: int) -> dict[str, torch.Tensor | float]:
        rank, world, n = self.draw.rank, self.draw.world, self.draw.batch_size * self.draw.world
        g = step_generator(self.seed, step)
        draw = share_of(self.parts.objective.draw(n, g, step), rank, world, n)
        draw["dropout_seed"] += rank  # dropout masks are drawn per forward, not per row: each process its own
        x0, cond = self.draw(g, data_generator(g, self.seed, step, rank, world))
        noise = self.draw.mine(torch.randn((n, *x0.shape[1:]), generator=g)).to(self.parts.accelerator.device)
        return ict_step(self.parts, ConsistencyBatch(x0, noise, draw, cond)) | {"num_scales": draw["num_scales"]}


@dataclass
class Validation:
    """Samples of the EMA network at each of `cfg.eval_steps`: pixel data, class grids and (with a classifier) the
    Frechet distance and class accuracy; latent data, prompt following on the emoji validation prompts."""

    cfg: ICTConfig
    parts: ICTStep
    sampler: CMScheduler
    family: Family | None
    reward: torch.nn.Module | None = None
    classifier: FashionClassifier | None = None
    reference: Any = None

    def __call__(self, step: int) -> dict[str, float]:
        model = self.parts.ema.averaged(self.parts.unet).to(self.parts.accelerator.device)
        grid = Path(self.cfg.output_dir) / "samples" / f"step-{step}.png"
        return self.pixel(model, grid) if self.family is None else self.latent(model, grid, step)

    def pixel(self, model: torch.nn.Module, grid: Path) -> dict[str, float]:
        cfg, out = self.cfg, {}
        if self.classifier is None and cfg.classifier and Path(cfg.classifier).is_dir():
            self.classifier = FashionClassifier.from_pretrained(cfg.classifier).eval()
            self.reference = fashion_reference(self.classifier, cfg.fashion_mnist_dir)
        for n in cfg.eval_steps:
            images, _ = sample_classes(model, self.sampler, 80, n, cfg.seed)
            save_grid((images + 1) / 2, grid.with_name(f"{grid.stem}-{n}step.png"), nrow=10)
            if self.classifier is not None:
                scores = fashion_scores(model, self.sampler, self.classifier, self.reference, n, cfg.eval_images,
                                        cfg.seed)
                out.update({f"{n}step_fd": scores[FD_NAME], f"{n}step_class_accuracy": scores["class_accuracy"]})
        return out

    def latent(self, model: torch.nn.Module, grid: Path, step: int) -> dict[str, float]:
        cfg, out = self.cfg, {}
        self.reward = self.reward or self.family.reward()
        for n in cfg.eval_steps:
            path = grid.with_name(f"{grid.stem}-{n}step.png")
            metrics = evaluate_prompt_following(self.family, cfg.member, self.reward, eval_prompt_sets(), n,
                                                cfg.eval_guidance, cfg.seed, path, unet=model, kind=ICT.kind)
            out.update({f"{n}step_{k}": v for k, v in metrics.items()})
            log_grids(self.parts.accelerator, sorted(path.parent.glob(f"{path.stem}-*.png")), step)
        return out


@dataclass
class ICTInputs:
    """What the entry point builds and hands to the trainer: the family (None: pixel data) and this process's
    training batches."""

    family: Family | None
    batches: Any


def ict_inputs(cfg: ICTConfig) -> ICTInputs:
    """The family and data of `cfg`, after the checks of what the user named that need no work (one-line errors);
    the main process fills the data caches first, the others then read them."""
    if get_method(cfg.method).trainer is not Trainer.ICT:
        raise ValueError(f"train_ict runs {', '.join(trainer_methods(Trainer.ICT))}, got --method {cfg.method}")
    ict_loss(cfg)  # bad loss settings fail before any work
    pixel = cfg.data == FASHION
    family = None if pixel else load_family(cfg.family)
    if not pixel:
        sampler_class(ICT.kind)  # fail now, not at the first evaluation or after export
        check_data_source(cfg.data)
    if cfg.export_dir not in (None, AUTO):
        refuse_shipped(cfg.export_dir, cfg.replace_shipped)
    state = process_state()
    choose_checkpoint(cfg.output_dir, cfg.resume, run_record(cfg, state), say=lambda *a, **k: None)  # a check only
    with state.main_process_first():
        return ICTInputs(family, ict_data(cfg, family, state))


def train_ict(cfg: ICTConfig, inputs: ICTInputs | None = None, accelerator: Accelerator | None = None
              ) -> dict[str, float]:
    """Train on `inputs` (the entry point's; None: `ict_inputs(cfg)`), resuming when asked, export the EMA network
    and register it (latent data); return final metrics."""
    inputs = inputs or ict_inputs(cfg)
    family, batches, pixel = inputs.family, inputs.batches, inputs.family is None
    objective = ict_loss(cfg)
    pixel_export = f"{RUNS}/{FASHION}/{cfg.member}" if pixel and cfg.export_dir == AUTO else cfg.export_dir
    accelerator = accelerator or make_accelerator(cfg.report_to, cfg.output_dir, mixed_precision=cfg.mixed_precision)
    record = run_record(cfg, accelerator)
    resume = choose_checkpoint(cfg.output_dir, cfg.resume, record, accelerator.print)  # before anything is written
    export, registry = export_plan(pixel_export, family, cfg.member, cfg.replace_shipped,
                                   write=accelerator.is_main_process)
    accelerator.init_trackers("ict", config={k: str(v) for k, v in flat_values(cfg).items()})
    set_seed(cfg.seed)  # the same initialisation on every process and every fresh run
    unet = ict_unet(cfg, family, batches)
    parts = ict_parts(cfg, objective, unet, accelerator)
    counter = StepCounter()
    for state in (counter, parts.ema) + ((batches,) if hasattr(batches, "consumed") else ()):
        accelerator.register_for_checkpointing(state)
    sampler = CMScheduler(cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, cfg.rho)
    draw = BatchDraw(batches, cfg.batch_size, accelerator.device, family, unet, cfg.cfg_dropout,
                     accelerator.process_index, accelerator.num_processes)
    validation = Validation(cfg, parts, sampler, family)
    metrics = run_training(accelerator, counter, cfg.output_dir, cfg.max_steps,
                           TrainStep(parts, draw, cfg.seed),
                           validation if cfg.eval_every > 0 else None, resume, cfg.checkpoint_every,
                           max(cfg.eval_every, 1), stop_at=cfg.stop_at, settings=record)
    if accelerator.is_main_process and export is not None and counter.step >= cfg.max_steps:
        final = parts.ema.averaged(unet).to(accelerator.device)
        save_unet(final, export, cfg.export_dtype)
        sampler.save_pretrained(export)
        metrics.update(steps=counter.step, params=sum(p.numel() for p in final.parameters()))
        write_metrics(export, metrics)
        if registry is not None:
            register_member(registry, cfg.member, export, kind=ICT.kind)
    accelerator.end_training()
    return metrics
