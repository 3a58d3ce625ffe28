"""Distil a family's teacher into a few-step student with a registered method (`rglcd.methods`: lcd, rg-lcd, mlcm).

Full model (`--lora-rank 0`): the student is the teacher's UNet plus a guidance-embedding projection, trained
against an EMA target, exported as a UNet2DConditionModel folder that diffusers' LatentConsistencyModelPipeline
loads. LoRA (`--lora-rank r`): peft adapters on the teacher, exported as diffusers LoRA safetensors that
`pipe.load_lora_weights()` loads on top of it. The objective comes from the method (`rglcd.objectives`), the step is
`rglcd.training.step.distill_step`; this file wires data, networks, optimiser, reward and checkpoints. Runs under
`accelerate launch` or plain python. Settings: `rglcd.training.distill_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

from rglcd.data.batches import EmojiBatches, EncodedBatches, check_data_source, training_batches
from rglcd.data.emoji import cache_dir, eval_prompt_sets
from rglcd.data.stream import StreamOptions
from rglcd.data.trajectories import TrajectorySet, TrajectorySpec, teacher_trajectories, weights_digest
from rglcd.evaluate import evaluate_prompt_following
from rglcd.files import write_metrics
from rglcd.methods import Method, ObjectiveParts, Trainer, get_method, trainer_methods
from rglcd.models import Family, load_family, register_member, save_unet
from rglcd.objectives import DistillBatch, RewardGuidance
from rglcd.rewards import get_reward
from rglcd.training.checkpoints import StepCounter, choose_checkpoint, run_record, step_generator
from rglcd.training.distill_config import DistillConfig, LCDSettings
from rglcd.training.export import AUTO, export_plan, refuse_shipped
from rglcd.training.global_batch import data_generator, local_samples, share_of, share_rows
from rglcd.training.loop import run_training
from rglcd.training.settings import check_values, flat_values
from rglcd.training.step import (ConsistencyUNet, DistillStep, distill_step, half_precision_teacher, make_optimizer,
                                 save_lora, side_updates, speed_options, student_and_target)
from rglcd.training.tracking import log_grids, make_accelerator, process_state

__all__ = ["DistillConfig", "train_distill"]


def check_settings(cfg: DistillConfig, method: Method) -> None:
    """ValueError (one line, before any work) for settings that contradict each other or the method."""
    if method.trainer is not Trainer.DISTILL:
        raise ValueError(f"--method {method.name} is not a distillation method: this trainer runs "
                         f"{', '.join(trainer_methods(Trainer.DISTILL))}")
    # each setting's type and declared range (`DistillConfig`), as the command line checks them
    check_values(DistillConfig, flat_values(cfg), lambda key: "--" + key.replace("_", "-"))
    rg, reward = cfg.rg, method.uses_reward(cfg.rg.reward is not None)
    if rg.reward_states == "sampler" and not reward:
        raise ValueError("--reward-states sampler needs a reward: --method rg-lcd, or --method mlcm with --reward")
    if rg.reward_states == "sampler" and not 1 <= rg.reward_sampler_steps <= cfg.lcd.num_ddim_timesteps:
        raise ValueError(f"--reward-sampler-steps must be in [1, {cfg.lcd.num_ddim_timesteps}], "
                         f"got {rg.reward_sampler_steps}")
    if cfg.dataset.trajectory_data > 0 and not method.trajectories:
        raise ValueError(f"--trajectory-data: --method {method.name} does not train on teacher trajectories")
    if cfg.proxy.proxy_rm and not reward:
        raise ValueError("--proxy-rm needs a reward: --method rg-lcd, or --method mlcm with --reward")


def distill_data(cfg: DistillConfig, family: Family, state: PartialState) -> Any:
    """The training batches of this process (`rglcd.data.batches.training_batches`)."""
    data = cfg.dataset
    stream = StreamOptions(data.data_mode, data.shuffle_buffer, data.dataloader_num_workers, cfg.seed)
    batches = training_batches(data.data, family, data.resolution, data.cache_latents, data.include_flags,
                               data.limit_concepts, state.process_index, state.num_processes,
                               data.phrasings, data.captions, stream)
    if data.target_captions == "name" and not isinstance(batches, EmojiBatches):
        raise ValueError("--target-captions name needs a caption table with each concept's name as phrasing 0: "
                         "use the emoji data (emoji or tensors:)")
    if data.data_latents == "sample":
        if not isinstance(batches, EncodedBatches) or batches.cached is not None:
            raise ValueError("--data-latents sample draws from the VAE posterior as images stream in: use shard, "
                             "folder or hf: data without --cache-latents")
        batches.sample_posterior = True
    return batches


def loss_arguments(lcd: LCDSettings, family: Family, device: torch.device) -> dict[str, Any]:
    """The arguments every distillation loss shares (`LCDLoss`'s fields), the noise schedule on `device`."""
    return dict(alphas_cumprod=DDPMScheduler.from_config(family.scheduler_config).alphas_cumprod.to(device),
                num_ddim_timesteps=lcd.num_ddim_timesteps, w_min=lcd.w_min, w_max=lcd.w_max,
                w_embedding_dim=lcd.w_embedding_dim, loss_type=lcd.loss_type, huber_c=lcd.huber_c,
                prediction_type=family.scheduler_config.get("prediction_type", "epsilon"))


def reward_guidance(cfg: DistillConfig, family: Family, device: torch.device) -> RewardGuidance:
    """The expert reward of the objective's reward term: the family's (`--reward` none or 'family') or a registry
    reward or mix, with the family's VAE to decode."""
    model = family.reward() if cfg.rg.reward in (None, "family") else get_reward(cfg.rg.reward)
    return RewardGuidance(model.to(device), family.vae.to(device))


def trajectories(cfg: DistillConfig, family: Family, batches: Any, teacher: torch.nn.Module,
                 teacher_net: ConsistencyUNet, loss: Any, accelerator: Accelerator) -> TrajectorySet:
    """`--trajectory-data` cached teacher trajectories (written once per teacher and settings, then reused): of the
    caption table's prompts, or under `--target-captions name` of each concept's name (prompt ids are concepts)."""
    if not hasattr(batches, "captions"):
        raise ValueError("--trajectory-data draws prompts from a caption table: use the emoji data or --cache-latents")
    table = batches.name_states if cfg.dataset.target_captions == "name" else batches.caption_states
    spec = TrajectorySpec(weights_digest(teacher), cfg.dataset.trajectory_data, cfg.lcd.num_ddim_timesteps,
                          cfg.lcd.w_min, cfg.lcd.w_max, cfg.seed, len(table))
    return teacher_trajectories(cache_dir() / "trajectories" / family.name, spec, teacher_net, table,
                                batches.empty, batches.latent_shape, loss.grid, loss.teacher_step,
                                cfg.dataset.trajectory_batch, accelerator)


def teacher_network(teacher: torch.nn.Module, online: torch.nn.Module, family: Family, lora: bool,
                    autocast: str | None = None) -> ConsistencyUNet:
    """The teacher as a `Net`: the family's teacher UNet, or for LoRA the online student with its adapters off."""
    if lora:
        return ConsistencyUNet(online, family.unet_inputs, adapters_off=True, autocast=autocast)
    return ConsistencyUNet(teacher, family.unet_inputs, autocast=autocast)


@dataclass
class DistillInputs:
    """What the entry point builds and hands to the trainer: the family, the teacher's UNet (fp32, on the CPU) and
    this process's training batches."""

    family: Family
    teacher: torch.nn.Module
    batches: Any


def distill_inputs(cfg: DistillConfig) -> DistillInputs:
    """The family, teacher and data of `cfg`, after every check of what the user named that needs no work (the
    settings, the family and member, the data source, an export into assets/): one-line errors before anything is
    computed or written. The main process fills the data caches (renders, encodings) first; the others then read
    them."""
    method = get_method(cfg.method)
    check_settings(cfg, method)
    family = load_family(cfg.family)
    teacher = family.unet(cfg.teacher)
    check_data_source(cfg.dataset.data, cfg.dataset.phrasings, cfg.dataset.captions)
    if cfg.export_dir not in (None, AUTO):
        refuse_shipped(cfg.export_dir, cfg.replace_shipped)
    state = process_state()
    choose_checkpoint(cfg.output_dir, cfg.resume, run_record(cfg, state), say=lambda *a, **k: None)  # a check only
    with state.main_process_first():
        return DistillInputs(family, teacher, distill_data(cfg, family, state))


@dataclass
class BatchDraw:
    """Draws this process's share of one global micro-batch of `batch_size` x `world` from the step's generator
    (`rglcd.training.global_batch`): the objective's draw, then data latents and noise (or teacher trajectory
    states), rows [rank*B, (rank+1)*B) of each; a stream split across processes gives this process's own samples
    instead, drawn with `own`. `name_targets` (`--target-captions name`): the teacher and target see each concept's
    bare name, the student a drawn phrasing (of the trajectory's concept: the trajectories are of names)."""

    objective: Any
    batches: Any
    batch_size: int
    cfg_dropout: float
    device: torch.device
    trajectories: TrajectorySet | None = None
    name_targets: bool = False
    rank: int = 0
    world: int = 1

    def __call__(self, g: torch.Generator, own: torch.Generator | None = None, step: int = 0) -> DistillBatch:
        n = self.batch_size * self.world
        draw = self.objective.draw(n, g, step)
        z0 = noise = states = target_ctx = None
        if self.trajectories is None:
            if local_samples(self.batches):
                z0, ctx, texts = self.batches.batch(self.batch_size, own or g, self.cfg_dropout)
            elif self.name_targets:
                z0, ctx, texts, target_ctx = self.batches.named_batch(n, g, self.cfg_dropout)
            else:
                z0, ctx, texts = self.batches.batch(n, g, self.cfg_dropout)
            noise = torch.randn((n, *z0.shape[1:]), generator=g)
        else:
            z_start, z_end, prompt, draw["w"] = self.trajectories.batch(n, draw["index"], g)
            if self.name_targets:
                target_ctx, prompt = self.batches.name_states[prompt].float(), self.batches.phrase(prompt, g)
            ctx = self.batches.caption_states[prompt].float()
            texts = [self.batches.captions[i] for i in prompt.tolist()]
            states = tuple(self.mine(z).to(self.device) for z in (z_start, z_end))
        z0, noise, ctx, target_ctx = (None if x is None else self.mine(x).to(self.device)
                                      for x in (z0, noise, ctx, target_ctx))
        uncond = self.batches.empty.float().expand_as(ctx).to(self.device)
        return DistillBatch(z0, noise, ctx, uncond, share_of(draw, self.rank, self.world, n), states,
                            self.mine(texts), g, target_ctx, (self.rank, self.world))

    def mine(self, rows: Any) -> Any:
        return share_rows(rows, self.rank, self.world, self.batch_size * self.world)


@dataclass
class TrainStep:
    """`run_training`'s step: the objective's settings at `step` (`at_step`), the micro-batches of optimiser step
    `step` (each from its own generator, the same on every process, so a resumed run draws the same),
    `distill_step`, and the scalars to log."""

    parts: DistillStep
    draw: BatchDraw
    cfg: DistillConfig

    def __call__(self, step: int) -> dict[str, torch.Tensor | float]:
        settings = self.parts.objective.at_step(step)
        accumulation, seed, rank, world = (self.cfg.optim.gradient_accumulation_steps, self.cfg.seed,
                                           self.draw.rank, self.draw.world)
        batches = []
        for index in range(step * accumulation, (step + 1) * accumulation):
            g = step_generator(seed, index)
            batches.append(self.draw(g, data_generator(g, seed, index, rank, world), step))
        out = distill_step(self.parts, batches)
        return {**out, "lr": self.parts.lr_scheduler.get_last_lr()[0], **settings}


@dataclass
class Validation:
    """Prompt following of the student in training on the emoji validation prompts, and its sample grids."""

    family: Family
    member: str
    method: Method
    unet: torch.nn.Module
    cfg: DistillConfig
    accelerator: Accelerator
    reward: torch.nn.Module | None = None

    def __call__(self, step: int) -> dict[str, float]:
        self.reward = self.reward or self.family.reward()
        grid = Path(self.cfg.output_dir) / "samples" / f"step-{step}.png"
        options = self.method.sampler_options(self.method.settings_of(self.cfg))
        metrics = evaluate_prompt_following(self.family, self.member, self.reward, eval_prompt_sets(),
                                            self.cfg.eval_steps, self.cfg.eval_guidance, self.cfg.seed, grid,
                                            unet=self.unet, kind=self.method.kind, scheduler_options=options or None)
        log_grids(self.accelerator, sorted(grid.parent.glob(f"{grid.stem}-*.png")), step)
        return metrics


def export_student(cfg: DistillConfig, method: Method, member: str, export: Path, registry: Path, online: Any,
                   target: Any, objective: Any) -> None:
    """Write the student (LoRA safetensors or the EMA target's UNet folder, and the objective's side networks, as
    the proxy RM) and register it."""
    lora = cfg.lora.lora_rank > 0
    if lora:
        save_lora(online, export)
    else:
        save_unet(target, export, cfg.export_dtype)
    for side in objective.side_networks().values():
        side.module.save_pretrained(export / side.folder)
    register_member(registry, member, export, kind=method.kind,
                    base=load_family(str(registry)).member(cfg.teacher)["unet"] if lora else None,
                    scheduler=method.sampler_options(method.settings_of(cfg)) or None)


def train_distill(cfg: DistillConfig, inputs: DistillInputs | None = None, accelerator: Accelerator | None = None
                  ) -> dict[str, float]:
    """Distil `inputs` (the entry point's; None: `distill_inputs(cfg)`), resuming when asked, export the student,
    register it in the family file; return final metrics."""
    # what a user names is checked before the accelerator writes the output folder and the tracker's files
    inputs = inputs or distill_inputs(cfg)
    family, teacher, batches = inputs.family, inputs.teacher, inputs.batches
    method = get_method(cfg.method)
    opt, lora = cfg.optim, cfg.lora.lora_rank > 0
    member = cfg.member or (method.lora_member() if lora else method.member)
    accelerator = accelerator or make_accelerator(cfg.report_to, cfg.output_dir,
                                                  mixed_precision=cfg.speed.mixed_precision,
                                                  gradient_accumulation_steps=opt.gradient_accumulation_steps)
    record = run_record(cfg, accelerator)
    resume = choose_checkpoint(cfg.output_dir, cfg.resume, record, accelerator.print)  # before anything is written
    export, registry = export_plan(cfg.export_dir, family, member, cfg.replace_shipped,
                                   write=accelerator.is_main_process)
    accelerator.init_trackers("distill", config={k: str(v) for k, v in flat_values(cfg).items()})
    set_seed(cfg.seed)  # initialisations (LoRA, proxy RM) repeat across fresh runs
    device, rank = accelerator.device, accelerator.process_index
    guidance = reward_guidance(cfg, family, device) if method.uses_reward(cfg.rg.reward is not None) else None
    student, target = student_and_target(teacher, cfg.lora.lora_rank, cfg.lora.lora_alpha, cfg.lcd.w_embedding_dim,
                                         cfg.speed.gradient_checkpointing, cfg.lcd.cond_proj_init)
    student.to(device)  # before the optimiser, which picks its kernel by the parameters' device
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, opt.learning_rate, opt.weight_decay)
    # accelerate steps a prepared schedule once per process each optimiser step (as if the batch grew with them)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer,
                                 num_warmup_steps=opt.warmup_steps * accelerator.num_processes)
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
    # after the student: a side network's initialisation (the proxy RM's) draws from the seeded RNG after its own
    objective = method.build(method.settings_of(cfg), ObjectiveParts(
        loss_arguments(cfg.lcd, family, device), opt.max_steps, guidance, family.scheduler_config,
        batches.latent_shape, batches.empty.shape[-1]))
    sides = side_updates(objective, accelerator)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    if isinstance(batches, EncodedBatches):  # a stream's position resumes with the run
        accelerator.register_for_checkpointing(batches)
    if target is not None:
        accelerator.register_for_checkpointing(target)
        target.to(device)
    teacher.to(device)
    online = accelerator.unwrap_model(student)
    distillation = getattr(objective, "distill", objective)  # the teacher step (inside a reward term, if any)
    trajectory_set = (trajectories(cfg, family, batches, teacher, teacher_network(teacher, online, family, lora),
                                   distillation, accelerator) if cfg.dataset.trajectory_data > 0 else None)
    if not lora:  # after the trajectories (their cache key is the fp32 teacher's digest); in place: the family's
        half_precision_teacher(teacher, accelerator.mixed_precision,  # cached teacher, which nothing else uses
                               cfg.speed.teacher_autocast)
    speed_options([student, target, None if lora else teacher], cfg.speed.channels_last, cfg.speed.compile)
    student_net = ConsistencyUNet(student, family.unet_inputs, base=online)
    parts = DistillStep(accelerator, objective, student, student_net,
                        teacher_network(teacher, online, family, lora, cfg.speed.teacher_autocast),
                        student_net if lora else ConsistencyUNet(target, family.unet_inputs), optimizer,
                        lr_scheduler, trainable, target, opt.ema_decay, opt.max_grad_norm, sides)
    draw = BatchDraw(objective, batches, opt.batch_size, cfg.dataset.cfg_dropout, device, trajectory_set,
                     cfg.dataset.target_captions == "name", rank, accelerator.num_processes)
    validation = Validation(family, member, method, online if lora else target, cfg, accelerator)
    metrics = run_training(accelerator, counter, cfg.output_dir, opt.max_steps,
                           TrainStep(parts, draw, cfg),
                           validation if cfg.eval_every > 0 else None, resume, cfg.checkpoint_every,
                           max(cfg.eval_every, 1), log_every=cfg.log_every, stop_at=cfg.stop_at, settings=record)
    if accelerator.is_main_process and export is not None and counter.step >= opt.max_steps:
        export_student(cfg, method, member, export, registry, online, target, objective)
        metrics.update(steps=counter.step, **({"concepts": batches.size} if hasattr(batches, "size") else {}))
        write_metrics(export, metrics)
    accelerator.end_training()
    return metrics
