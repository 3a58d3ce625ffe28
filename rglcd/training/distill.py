"""Latent consistency distillation of a family's teacher into an LCM: full model (EMA target) or LoRA.

Full model (`--lora-rank 0`): the student is the teacher's UNet plus a guidance-embedding projection
(`time_cond_proj_dim`, zero-initialised so the student starts as the teacher), exported as a UNet2DConditionModel
folder that diffusers' LatentConsistencyModelPipeline loads.
LoRA (`--lora-rank r`): one UNet with peft adapters (B zero-initialised); the teacher is that UNet with adapters
disabled, the target is the online student under no_grad (no EMA, as in LCM-LoRA); exported as diffusers LoRA
safetensors that `pipe.load_lora_weights()` loads on top of the teacher. The loss is `rglcd.objectives.LCDLoss`; this file only wires data, networks,
optimiser, EMA target and checkpoints. Runs under `accelerate launch` or plain python.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler

from rglcd.consistency import consistency_output
from rglcd.data.batches import EncodedBatches, training_batches
from rglcd.data.emoji import cache_dir, eval_prompt_sets
from rglcd.data.trajectories import TrajectorySpec, teacher_trajectories, weights_digest
from rglcd.evaluate import evaluate_prompt_following
from rglcd.models import STUDENT_SCHEDULERS, load_family, register_member, save_unet
from rglcd.objectives import LCDLoss, MLCMLoss, Net, ProxyPreference, RewardGuidance, sampler_state
from rglcd.rewards.proxy import LatentProxyReward
from rglcd.schedule import guidance_scale_embedding
from rglcd.training.checkpoints import StepCounter, step_generator
from rglcd.training.export import export_plan
from rglcd.training.loop import run_training
from rglcd.training.tracking import log_grids, make_accelerator


@dataclass
class DistillConfig:
    method: str = "lcd"
    family: str = "emoji-64"
    teacher: str = "teacher"
    member: str = "lcm"  # the name the exported student gets in the family file
    output_dir: str = "runs/emoji-64/lcm"
    export_dir: str | None = "auto"  # auto: runs/<family>/<member>, registered in runs/<family>/family.json
    replace_shipped: bool = False  # allow exporting into assets/ (the shipped family) and registering there
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    max_steps: int = 2000
    ema_decay: float = 0.95
    w_min: float = 2.0  # LCM convention: pipeline guidance scale - 1
    w_max: float = 8.0
    w_embedding_dim: int = 256
    num_ddim_timesteps: int = 50
    loss_type: str = "huber"
    huber_c: float = 0.001
    cfg_dropout: float = 0.0
    checkpoint_every: int = 250
    log_every: int = 10  # steps between logged scalars (each read back from the device once)
    eval_every: int = 500  # 0: no validation (grids + prompt following on the emoji evaluation prompts)
    eval_steps: int = 4
    eval_guidance: float = 5.0
    seed: int = 0
    resume: str | None = "latest"
    stop_at: int | None = None
    data: str = "emoji"  # 'emoji', a webdataset shard pattern ('shards/{00000..00099}.tar') or an image folder
    resolution: int | None = None  # training image size for shard / folder data (default: the family's)
    cache_latents: bool = False  # encode shard / folder data once into a cache of latents and text states
    include_flags: bool = False
    limit_concepts: int | None = None
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step (a step counts optimiser steps)
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # "no" | "bf16" | "fp16"; None: what `accelerate launch` was given
    report_to: str = "tensorboard"  # tensorboard | wandb | all | none
    export_dtype: str = "fp32"  # fp32 | fp16: the exported weights file (fp16 halves it; loading upcasts)
    gradient_checkpointing: bool = False
    channels_last: bool = False  # UNet weights and activations in NHWC (faster convolutions on some devices)
    compile: bool = False  # torch.compile the UNets (the first steps then include compilation)
    teacher_autocast: str | None = None  # bf16 | fp16: the teacher's no-grad forwards under autocast to this dtype
    # even when training in fp32, as diffusers' LCD scripts run it (emoji-64 LCD, 30 steps: per-step loss within 0.4%
    # of fp32; the EMA target stays fp32: in bf16 it raised the loss by 6-13%)
    reward: str | None = None  # registry name or mix ("hpsv2.1=1,imagereward=0.1"), or "family"; rg-lcd: None is
    # the family's reward; mlcm: a reward adds the preference term
    reward_scale: float = 1.0  # beta: loss = LCD - beta * R(decode(student one-step prediction))
    reward_states: str = "data"  # data: f on the LCD batch's noised data latents (the paper) | sampler: on the
    # states the student's own few-step sampler visits (`rglcd.objectives.sampler_state`)
    reward_sampler_steps: int = 4  # sampler: the sampler's step count; each micro-batch stops after 0..steps-1 of them
    proxy_rm: bool = False  # maximise a latent proxy reward model trained online on the expert's preferences
    proxy_lr: float = 1e-4
    proxy_loss: str = "kl"  # kl | ce, over {student prediction, target prediction, data latent}
    proxy_temperature: float = 1.0  # of the expert's preference softmax
    proxy_weights: str | None = None  # a pretrained proxy (folder of LatentProxyReward.save_pretrained)
    segments: int = 8  # mlcm: segments of the trajectory (one segment is lcd)
    progressive: tuple[int, ...] | None = None  # mlcm: segments per stage, equal stages, e.g. (8, 4, 2)
    trajectory_data: int = 0  # mlcm: train on this many cached teacher trajectories (0: noised data latents)
    trajectory_batch: int = 64  # teacher batch when writing the trajectories
    lora_rank: int = 0  # 0: distil the full model; r > 0: LoRA adapters of rank r on the teacher
    lora_alpha: float | None = None  # default: equal to the rank
    # Reference-fidelity options (README "Where we differ from the references"); read in train_distill only.
    mlcm_edges: str = "floor"  # mlcm: segment edges rounded down as PCM ("round": the shipped emoji-64 mlcm's)
    mlcm_clean_end: str = "ddim"  # mlcm: lowest segment a DDIM jump to alphas_cumprod[0] as PCM ("lcm": LCD's)
    proxy_variant: str = "reference"  # reference (RG-LCD Alg. 4 and code) | batch-softmax (`rglcd.rewards.proxy`)
    proxy_batch: int = 16  # reference proxy: candidates' prompts per proxy update, drawn from the batch
    cond_proj_init: str = "zero"  # full-model student's guidance projection: zero (starts as the teacher) | random
    # (diffusers' LCD script: the layer's default init)
    weight_decay: float = 0.0  # the student's AdamW (diffusers' LCD script: 1e-2; RG-LCD's script: 0)
    data_latents: str = "mode"  # AutoencoderKL data latents: posterior mode | sample (a fresh draw each step, as
    # diffusers' LCD script; streamed shard / folder data only, not --cache-latents or the emoji set)


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


METHODS = ("lcd", "rg-lcd", "mlcm")


def segments_at(cfg: DistillConfig, step: int) -> int:
    """MLCM segments at optimiser step `step`: `progressive` split into equal stages over `max_steps`, else fixed."""
    if not cfg.progressive:
        return cfg.segments
    stages = list(cfg.progressive)
    return int(stages[min(step * len(stages) // max(cfg.max_steps, 1), len(stages) - 1)])


def student_from_teacher(teacher: UNet2DConditionModel, w_embedding_dim: int, cond_proj_init: str = "zero"
                         ) -> UNet2DConditionModel:
    """The teacher's UNet plus a guidance projection `time_embedding.cond_proj`: zero-initialised ("zero": at start
    it computes exactly the teacher) or left at its layer's default init ("random", as diffusers' LCD script)."""
    if cond_proj_init not in ("zero", "random"):
        raise ValueError(f"--cond-proj-init must be zero or random, got {cond_proj_init!r}")
    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=w_embedding_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("time_embedding.cond_proj") for k in missing):
        raise RuntimeError(f"teacher and student UNets differ: missing {missing}, unexpected {unexpected}")
    if cond_proj_init == "zero":
        torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def student_and_target(teacher: UNet2DConditionModel, lora_rank: int = 0, lora_alpha: float | None = None,
                       w_embedding_dim: int = 256, gradient_checkpointing: bool = False, cond_proj_init: str = "zero"
                       ) -> tuple[UNet2DConditionModel, UNet2DConditionModel | None]:
    """The trainable student and its EMA target (None for LoRA: the target is the online student itself).

    Full model: `student_from_teacher`, target a frozen copy in eval mode. LoRA (`lora_rank` > 0): a copy of the
    teacher with peft adapters of rank `lora_rank` on `LORA_TARGETS` (B zero-initialised), only they train.
    """
    if lora_rank > 0:
        from peft import LoraConfig

        student = copy.deepcopy(teacher).requires_grad_(False).train()
        student.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, init_lora_weights="gaussian",
                                       target_modules=LORA_TARGETS))
        target = None
    else:
        student = student_from_teacher(teacher, w_embedding_dim, cond_proj_init).train()
        target = copy.deepcopy(student).requires_grad_(False).eval()
    if gradient_checkpointing:
        student.enable_gradient_checkpointing()
    return student, target


def unet_call(unet: torch.nn.Module, unet_inputs: Callable[[Any, torch.Tensor], dict[str, Any]],
              device: torch.device | str, base: Any = None) -> Net:
    """`unet` (possibly accelerate-wrapped; `base` its unwrapped model) as a `Net` for the losses: the guidance
    embedding goes in only when the UNet takes one (`time_cond_proj_dim`); `unet_inputs(base, context)` gives the
    conditioning keywords (a family's `unet_inputs`)."""
    base = unet if base is None else base
    takes_w = base.config.time_cond_proj_dim is not None
    return lambda z, t, c, w: unet(z, t.to(device), timestep_cond=w if takes_w else None,
                                   **unet_inputs(base, c)).sample


def adapters_off_call(online: torch.nn.Module, unet_inputs: Callable[[Any, torch.Tensor], dict[str, Any]],
                      device: torch.device | str) -> Net:
    """The LoRA student's base model (its adapters disabled for the call) as a `Net`: the teacher of LCD-LoRA."""
    def teacher(z: torch.Tensor, t: torch.Tensor, c: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        online.disable_adapters()
        try:
            return online(z, t.to(device), **unet_inputs(online, c)).sample
        finally:
            online.enable_adapters()

    return teacher


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, over all parameters in place (one foreach kernel)."""
    torch._foreach_lerp_(list(target.parameters()), [p.detach() for p in online.parameters()], 1 - decay)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (weight decay 0 by default; the reference LCD script's is 1e-2); its fused kernel when the parameters
    are on CUDA. (Not on a CPU: there the fused
    kernel made a killed-and-resumed run's loss differ from the uninterrupted run's.)"""
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def half_precision_teacher(teacher: UNet2DConditionModel, mixed_precision: str | None) -> UNet2DConditionModel:
    """The frozen teacher cast in place to the mixed-precision dtype (bf16 / fp16), as the reference script's
    `--cast_teacher_unet`: autocast would otherwise cast its fp32 weights again at every forward."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision or "no")
    # nn.Module.to: diffusers' ModelMixin.to warns about fp32-kept modules, of which the UNet has none
    return teacher if dtype is None else torch.nn.Module.to(teacher, dtype)


def autocast_call(net: Net, device: torch.device | str, dtype: str | None) -> Net:
    """`net` run under `torch.autocast` to `dtype` ("bf16" | "fp16"; None: `net` itself), output in float32."""
    if dtype is None:
        return net
    if dtype not in ("bf16", "fp16"):
        raise ValueError(f"--teacher-autocast must be bf16 or fp16, got {dtype!r}")
    kind, half = torch.device(device).type, torch.bfloat16 if dtype == "bf16" else torch.float16

    def run(z: torch.Tensor, t: torch.Tensor, c: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(kind, dtype=half):
            return net(z, t, c, w).float()

    return run


def speed_options(unets: list[torch.nn.Module | None], channels_last: bool, compile: bool) -> None:
    """Optional speed settings on the UNets in place: NHWC memory format, `torch.compile` of their forwards."""
    for unet in unets:
        if unet is None:
            continue
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        if compile:
            unet.compile()


@dataclass
class MicroBatch:
    """One micro-batch on the device: data latents (B,C,h,w) and noise (B,C,h,w), or `states` (z_{t_{n+k}},
    z_{t_n}) from teacher trajectories (then latents and noise are None); text states (B,L,D) and unconditional
    states (B,L,D); the loss's `draw`; the prompts; and the generator the micro-batch was drawn from (the reward
    sampler goes on drawing from it)."""

    latents: torch.Tensor | None
    noise: torch.Tensor | None
    context: torch.Tensor
    uncond: torch.Tensor
    draw: dict[str, torch.Tensor]
    states: tuple[torch.Tensor, torch.Tensor] | None = None
    texts: list[str] = field(default_factory=list)
    generator: torch.Generator | None = None


@dataclass
class DistillStep:
    """What one optimiser step of LCD / RG-LCD / MLCM touches: the loss, the networks as `Net`s, the prepared
    student module, its optimiser and LR schedule, the EMA target (None: no EMA, as LoRA), and the optional reward
    term: `reward(x0 (B,C,h,w), micro) -> (B,)` on `x0` = the student's one-step prediction, or `reward_x0(micro)`
    when given (on-policy sampler states); `proxy_step(aux, micro) -> {name: 0-d tensor}` after each micro-batch."""

    accelerator: Accelerator
    loss_fn: LCDLoss
    student_module: torch.nn.Module
    student: Net
    teacher: Net
    target: Net
    optimizer: Any
    lr_scheduler: Any
    trainable: list[torch.nn.Parameter]
    ema_target: torch.nn.Module | None = None
    ema_decay: float = 0.95
    max_grad_norm: float = 1.0
    reward: Callable[[torch.Tensor, MicroBatch], torch.Tensor] | None = None
    reward_scale: float = 1.0
    reward_x0: Callable[[MicroBatch], torch.Tensor] | None = None
    proxy_step: Callable[[dict[str, torch.Tensor], MicroBatch], dict[str, torch.Tensor]] | None = None


def distill_step(parts: DistillStep, micro_batches: list[MicroBatch]) -> dict[str, torch.Tensor]:
    """One optimiser step over `micro_batches` (accumulated under `accelerator.accumulate`), then the EMA update.

    Returns 0-d tensors (no host sync): 'loss' (mean over micro-batches and processes), 'reward' when a reward is
    used, and the proxy's scalars averaged over micro-batches.
    """
    accelerator, n = parts.accelerator, len(micro_batches)
    total = reward_sum = None
    proxy_stats: dict[str, torch.Tensor] = {}
    for micro in micro_batches:
        with accelerator.accumulate(parts.student_module), accelerator.autocast():
            loss, aux = parts.loss_fn(parts.student, parts.teacher, parts.target, micro.latents, micro.context,
                                      micro.uncond, micro.noise, micro.draw, micro.states)
            loss = loss.mean()
            if parts.reward is not None:
                x0 = aux["student_x0"] if parts.reward_x0 is None else parts.reward_x0(micro)
                rewards = parts.reward(x0, micro)
                loss = loss - parts.reward_scale * rewards.mean()  # RewardGuidance.total: the RG-LCD loss
                part = rewards.mean().detach() / n
                reward_sum = part if reward_sum is None else reward_sum + part
            accelerator.backward(loss)
            if accelerator.sync_gradients and parts.max_grad_norm > 0:
                accelerator.clip_grad_norm_(parts.trainable, parts.max_grad_norm)
            parts.optimizer.step()
            parts.lr_scheduler.step()
            parts.optimizer.zero_grad(set_to_none=True)
        total = loss.detach() / n if total is None else total + loss.detach() / n
        if parts.proxy_step is not None:
            for k, v in parts.proxy_step(aux, micro).items():
                proxy_stats[k] = proxy_stats.get(k, 0.0) + v / n
    if parts.ema_target is not None:
        ema_update(parts.ema_target, accelerator.unwrap_model(parts.student_module), parts.ema_decay)
    out = {"loss": accelerator.reduce(total.float(), "mean")}
    if reward_sum is not None:
        out["reward"] = reward_sum
    return out | proxy_stats


def save_lora(unet: UNet2DConditionModel, folder: Path) -> None:
    """The UNet's peft adapters as diffusers LoRA safetensors (`pytorch_lora_weights.safetensors`)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)


def train_distill(cfg: DistillConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Distil (resuming when asked), export the student, register it in the family file; return final metrics."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; this version implements: {', '.join(METHODS)}")
    family = load_family(cfg.family)
    export, registry = export_plan(cfg.export_dir, family, cfg.member, cfg.replace_shipped)
    accelerator = accelerator or make_accelerator(cfg.report_to, cfg.output_dir, mixed_precision=cfg.mixed_precision,
                                                  gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    accelerator.init_trackers("distill", config={k: str(v) for k, v in asdict(cfg).items()})
    set_seed(cfg.seed)  # initialisations (LoRA, proxy RM) repeat across fresh runs
    batches = training_batches(cfg.data, family, cfg.resolution, cfg.cache_latents, cfg.include_flags,
                               cfg.limit_concepts, accelerator.process_index, accelerator.num_processes)
    if cfg.data_latents not in ("mode", "sample"):
        raise ValueError(f"--data-latents must be mode or sample, got {cfg.data_latents!r}")
    if cfg.data_latents == "sample":
        if not isinstance(batches, EncodedBatches) or batches.cached is not None:
            raise ValueError("--data-latents sample draws from the VAE posterior as images stream in: use shard, "
                             "folder or hf: data without --cache-latents")
        batches.sample_posterior = True
    teacher = family.unet(cfg.teacher)
    prediction_type = family.scheduler_config.get("prediction_type", "epsilon")
    alphas_cumprod = DDPMScheduler.from_config(family.scheduler_config).alphas_cumprod.to(accelerator.device)
    loss_args = (alphas_cumprod, cfg.num_ddim_timesteps, cfg.w_min, cfg.w_max, cfg.w_embedding_dim, cfg.loss_type,
                 cfg.huber_c, prediction_type)
    mlcm_options = {"edge_rounding": cfg.mlcm_edges, "clean_end": cfg.mlcm_clean_end}  # the sampler's too
    loss_fn = (MLCMLoss(*loss_args, num_segments=segments_at(cfg, 0), **mlcm_options) if cfg.method == "mlcm"
               else LCDLoss(*loss_args))

    guidance = None
    if cfg.method == "rg-lcd" or (cfg.method == "mlcm" and cfg.reward):
        from rglcd.rewards import get_reward

        reward_model = family.reward() if cfg.reward in (None, "family") else get_reward(cfg.reward)
        guidance = RewardGuidance(reward_model.to(accelerator.device), family.vae.to(accelerator.device),
                                  cfg.reward_scale)
    reward_scheduler = None
    if cfg.reward_states not in ("data", "sampler"):
        raise ValueError(f"--reward-states must be data or sampler, got {cfg.reward_states!r}")
    if cfg.reward_states == "sampler":
        if guidance is None:
            raise ValueError("--reward-states sampler needs a reward: --method rg-lcd, or --method mlcm with --reward")
        if not 1 <= cfg.reward_sampler_steps <= cfg.num_ddim_timesteps:
            raise ValueError(f"--reward-sampler-steps must be in [1, {cfg.num_ddim_timesteps}], "
                             f"got {cfg.reward_sampler_steps}")
        reward_scheduler = STUDENT_SCHEDULERS["mlcm" if cfg.method == "mlcm" else "lcm"]().from_config(
            {**family.scheduler_config, **(mlcm_options if cfg.method == "mlcm" else {})})
    lora = cfg.lora_rank > 0
    student, target = student_and_target(teacher, cfg.lora_rank, cfg.lora_alpha, cfg.w_embedding_dim,
                                         cfg.gradient_checkpointing, cfg.cond_proj_init)
    student.to(accelerator.device)  # before the optimiser, which picks its kernel by the parameters' device
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg.learning_rate, cfg.weight_decay)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps)
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
    proxy = proxy_optimizer = None
    if cfg.proxy_rm:
        if guidance is None:
            raise ValueError("--proxy-rm needs a reward: --method rg-lcd, or --method mlcm with --reward")
        proxy = LatentProxyReward.from_pretrained(cfg.proxy_weights) if cfg.proxy_weights else LatentProxyReward(
            batches.latent_shape[0], batches.empty.shape[-1])
        proxy_optimizer = torch.optim.AdamW(proxy.parameters(), lr=cfg.proxy_lr, weight_decay=0.0)
        proxy, proxy_optimizer = accelerator.prepare(proxy, proxy_optimizer)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    if isinstance(batches, EncodedBatches):  # a stream's position resumes with the run
        accelerator.register_for_checkpointing(batches)
    rank, device = accelerator.process_index, accelerator.device
    if target is not None:
        accelerator.register_for_checkpointing(target)
        target.to(device)
    teacher.to(device)
    online = accelerator.unwrap_model(student)

    def call(unet: torch.nn.Module) -> Net:
        return unet_call(unet, family.unet_inputs, device, accelerator.unwrap_model(unet))

    teacher_net = adapters_off_call(online, family.unet_inputs, device) if lora else call(teacher)
    target_net = call(student) if lora else call(target)
    trajectories = None
    if cfg.trajectory_data > 0:
        if not hasattr(batches, "captions"):
            raise ValueError("--trajectory-data draws prompts from a caption table: use the emoji data or "
                             "--cache-latents")
        captions, caption_table = batches.captions, batches.caption_states  # (P,) texts and (P,L,D) states
        spec = TrajectorySpec(weights_digest(teacher), cfg.trajectory_data, cfg.num_ddim_timesteps, cfg.w_min,
                              cfg.w_max, cfg.seed, len(captions))
        trajectories = teacher_trajectories(cache_dir() / "trajectories" / family.name, spec, teacher_net,
                                            caption_table, batches.empty, batches.latent_shape,
                                            loss_fn.grid, loss_fn.teacher_step, cfg.trajectory_batch, accelerator)

    if not lora:  # after the trajectories (their cache key is the fp32 teacher's digest); in place: the family's
        half_precision_teacher(teacher, accelerator.mixed_precision)  # cached teacher, which nothing else here uses
    teacher_net = autocast_call(teacher_net, device, cfg.teacher_autocast)
    speed_options([student, target, None if lora else teacher], cfg.channels_last, cfg.compile)
    reward = None
    kind = "mlcm" if cfg.method == "mlcm" else "lcm"
    proxy_objective = ProxyPreference(guidance, cfg.proxy_variant, cfg.proxy_loss, cfg.proxy_temperature,
                                      cfg.proxy_batch) if proxy is not None else None

    def train_proxy(aux: dict[str, torch.Tensor], micro: MicroBatch) -> dict[str, torch.Tensor]:
        """One proxy-RM step on the candidates {student prediction, target prediction, data latent} of each prompt
        (`ProxyPreference`: the expert scores their decodes, the proxy learns its preferences)."""
        z0, ctx, texts, g = micro.latents, micro.context, micro.texts, micro.generator
        cands = [aux["student_x0"].detach(), aux["target"].to(aux["student_x0"].dtype)] + (
            [z0] if z0 is not None else [])
        proxy_loss, scores, expert = proxy_objective(proxy, cands, ctx, texts, g)
        proxy_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(proxy_loss)
        proxy_optimizer.step()
        proxy_optimizer.zero_grad(set_to_none=True)
        agree = (scores.argmax(-1) == expert.argmax(-1)).float().mean()
        return {"proxy_loss": proxy_loss.detach(), "proxy_agreement": agree, "expert_reward": expert[:, 0].mean()}

    def sampler_x0(ctx: torch.Tensor, w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The student's clean estimate (B,C,h,w), with grad, at a state its own sampler visits (`sampler_state`)."""
        stop = int(torch.randint(0, cfg.reward_sampler_steps, (), generator=g))
        noise = torch.randn((len(ctx), *batches.latent_shape), generator=g).to(device)
        w_emb = guidance_scale_embedding(w.to(device), cfg.w_embedding_dim).to(ctx.dtype)
        z, t = sampler_state(call(student), reward_scheduler, noise, ctx, w_emb, cfg.reward_sampler_steps, stop, g)
        return consistency_output(call(student)(z, t, ctx, w_emb), z, t, alphas_cumprod.to(device), prediction_type)

    def reward_of(x0: torch.Tensor, micro: MicroBatch) -> torch.Tensor:
        """(B,) rewards on the training scale: the expert's, or the proxy's (`ProxyPreference.student_reward`)."""
        return guidance(x0, micro.texts) if proxy is None else proxy_objective.student_reward(proxy, x0, micro.context)

    parts = DistillStep(accelerator, loss_fn, student, call(student), teacher_net, target_net, optimizer,
                        lr_scheduler, trainable, target, cfg.ema_decay, cfg.max_grad_norm,
                        reward=reward_of if guidance is not None else None, reward_scale=cfg.reward_scale,
                        reward_x0=(lambda m: sampler_x0(m.context, m.draw["w"], m.generator))
                        if reward_scheduler is not None else None,
                        proxy_step=train_proxy if proxy is not None else None)

    def micro_batch(g: torch.Generator) -> MicroBatch:
        """Draw one micro-batch of `batch_size` from `g`: the loss's draw, then data and noise (or trajectories)."""
        draw = loss_fn.draw(cfg.batch_size, g)
        z0 = noise = states = None
        if trajectories is None:
            z0, ctx, texts = batches.batch(cfg.batch_size, g, cfg.cfg_dropout)
            noise = torch.randn(z0.shape, generator=g)
            z0, noise = z0.to(device), noise.to(device)
        else:
            z_start, z_end, prompt, draw["w"] = trajectories.batch(cfg.batch_size, draw["index"], g)
            ctx, texts = caption_table[prompt].float(), [captions[i] for i in prompt.tolist()]
            states = (z_start.to(device), z_end.to(device))
        uncond = batches.empty.float().expand_as(ctx).to(device)
        return MicroBatch(z0, noise, ctx.to(device), uncond, draw, states, texts, g)

    def train_step(step: int) -> dict[str, torch.Tensor | float]:
        """One optimiser step over `gradient_accumulation_steps` micro-batches of `batch_size` per process."""
        if isinstance(loss_fn, MLCMLoss):
            loss_fn.num_segments = segments_at(cfg, step)
        micro = [micro_batch(step_generator(cfg.seed, step * cfg.gradient_accumulation_steps + i, rank))
                 for i in range(cfg.gradient_accumulation_steps)]
        out: dict[str, torch.Tensor | float] = {**distill_step(parts, micro), "lr": lr_scheduler.get_last_lr()[0]}
        if isinstance(loss_fn, MLCMLoss):
            out["segments"] = loss_fn.num_segments
        return out

    def evaluate(step: int) -> dict[str, float]:
        nonlocal reward
        reward = reward or family.reward()
        grid = Path(cfg.output_dir) / "samples" / f"step-{step}.png"
        metrics = evaluate_prompt_following(family, cfg.member, reward, eval_prompt_sets(), cfg.eval_steps,
                                            cfg.eval_guidance, cfg.seed, grid, unet=online if lora else target,
                                            kind=kind, scheduler_options=mlcm_options if kind == "mlcm" else None)
        log_grids(accelerator, sorted(grid.parent.glob(f"{grid.stem}-*.png")), step)
        return metrics

    metrics = run_training(accelerator, counter, cfg.output_dir, cfg.max_steps, train_step,
                           evaluate if cfg.eval_every > 0 else None, cfg.resume, cfg.checkpoint_every,
                           max(cfg.eval_every, 1), log_every=cfg.log_every, stop_at=cfg.stop_at)
    if accelerator.is_main_process and export is not None and counter.step >= cfg.max_steps:
        if lora:
            save_lora(online, export)
        else:
            save_unet(target, export, cfg.export_dtype)
        if proxy is not None:
            accelerator.unwrap_model(proxy).save_pretrained(export / "proxy-rm")
        metrics.update(steps=counter.step, **({"concepts": batches.size} if hasattr(batches, "size") else {}))
        (export / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        register_member(registry, cfg.member, export, kind=kind,
                        base=load_family(str(registry)).member(cfg.teacher)["unet"] if lora else None,
                        scheduler=mlcm_options if kind == "mlcm" else None)
    accelerator.end_training()
    return metrics
