"""Our LCD training step against diffusers' reference step, timed interleaved in one process on the same models,
batch and inputs: steps per second, their ratio, and the peak memory of each.

    python bench/train_vs_reference.py --threads 1                               # emoji-64 teacher, batch 32, CPU
    python bench/train_vs_reference.py --full-size sd21-768 --device cuda --dtype bf16 --batch-size 4
    python bench/train_vs_reference.py --full-size tiny --batch-size 4           # the same code on tiny shapes

The reference is `ReferenceStep`: the step of diffusers' examples/consistency_distillation/
train_lcm_distill_sd_wds.py (LCD-LoRA: train_lcm_distill_lora_sd_wds.py) at commit 58eb52c0 restated line by line,
its comments naming the script's numbered steps: teacher cond and uncond as two forwards under
`torch.autocast(device.type)` (the script's default dtype: fp16 on CUDA, bf16 on a CPU), the teacher cast to the
mixed-precision dtype (`--cast_teacher_unet`), student forward and backward, the target forward under autocast,
AdamW (torch's default kernel choice), the `update_ema` loop. Ours is `rglcd.training.distill.distill_step`, the
step the trainer runs, on networks built by the trainer's own functions. Text encoding and VAE encoding are not
timed (random latents and text states for both).

Steps alternate (ours first on even steps, the reference first on odd ones) so that load from other processes
falls on both alike. Peak memory: on a GPU, torch.cuda.max_memory_allocated during each side's steps minus the
resident tensors (weights, gradients, optimiser state) of the other side; on a CPU, the peak resident set size
during `--memory-steps` steps of a fresh process that builds only that side (one process per side; Linux).
Writes bench/results/train-vs-reference-<family or shape>-<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import full_size
from report import write_report

from rglcd.objectives import DistillBatch, LCDLoss
from rglcd.training.step import (LORA_TARGETS, ConsistencyUNet, DistillStep, distill_step, half_precision_teacher,
                                 make_optimizer, speed_options, student_and_target)

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
LORA_RANK = 16
W_EMBEDDING_DIM = 256


@dataclass
class Setup:
    """A teacher UNet (fp32, on the device) and the shapes and schedule of its training inputs."""

    teacher: Any
    latent_shape: tuple[int, int, int]
    context_shape: tuple[int, int]
    scheduler_config: dict[str, Any]
    prediction_type: str

    def loss(self) -> LCDLoss:
        """The LCD loss with its noise schedule on the teacher's device, as the trainer builds it."""
        from diffusers import DDPMScheduler

        alphas = DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(self.teacher.device)
        return LCDLoss(alphas, w_min=2.0, w_max=8.0, w_embedding_dim=W_EMBEDDING_DIM,
                       prediction_type=self.prediction_type)


def build_setup(what: str, device: str) -> Setup:
    """`what`: a family name (its teacher UNet; MiniLM-shaped random states) or a `full_size.SHAPES` name."""
    if what in full_size.SHAPES:
        shape = full_size.SHAPES[what]
        torch.manual_seed(0)
        with torch.device(device):
            teacher = full_size.build_unet(shape)
        return Setup(teacher.requires_grad_(False).eval(), (4, shape.resolution // 8, shape.resolution // 8),
                     (shape.text_length, shape.context_dim), full_size.scheduler_config(shape), shape.prediction_type)
    from rglcd.models import load_family

    family = load_family(what)
    teacher = family.unet("teacher").to(device).requires_grad_(False).eval()
    size = teacher.config.sample_size
    length = int(family.spec.get("max_length", 77))
    return Setup(teacher, (teacher.config.in_channels, size, size), (length, teacher.config.cross_attention_dim),
                 dict(family.scheduler_config), family.scheduler_config.get("prediction_type", "epsilon"))


def step_inputs(setup: Setup, loss_fn: LCDLoss, batch: int, step: int, device: str) -> DistillBatch:
    """The inputs of step `step`, the same for both sides: data latents, noise, text states (unconditional: zeros)
    and the loss's draw (grid index, timesteps, w)."""
    g = torch.Generator().manual_seed(1000 + step)
    draw = loss_fn.draw(batch, g)
    z0 = torch.randn(batch, *setup.latent_shape, generator=g)
    noise = torch.randn(z0.shape, generator=g)
    ctx = torch.randn(batch, *setup.context_shape, generator=g)
    return DistillBatch(z0.to(device), noise.to(device), ctx.to(device), torch.zeros_like(ctx).to(device), draw)


# ---- the reference: diffusers' LCD scripts restated ----

def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    b, *_ = t.shape
    return a.gather(-1, t).reshape(b, *((1,) * (len(x_shape) - 1)))


def scalings_for_boundary_conditions(timestep: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    scaled_timestep = timestep_scaling * timestep
    c_skip = sigma_data**2 / (scaled_timestep**2 + sigma_data**2)
    c_out = scaled_timestep / (scaled_timestep**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def get_predicted_original_sample(model_output, timesteps, sample, prediction_type, alphas, sigmas):
    alphas = extract_into_tensor(alphas, timesteps, sample.shape)
    sigmas = extract_into_tensor(sigmas, timesteps, sample.shape)
    if prediction_type == "epsilon":
        return (sample - sigmas * model_output) / alphas
    if prediction_type == "v_prediction":
        return alphas * sample - sigmas * model_output
    raise ValueError(prediction_type)


def get_predicted_noise(model_output, timesteps, sample, prediction_type, alphas, sigmas):
    alphas = extract_into_tensor(alphas, timesteps, sample.shape)
    sigmas = extract_into_tensor(sigmas, timesteps, sample.shape)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alphas * model_output + sigmas * sample
    raise ValueError(prediction_type)


def reference_guidance_embedding(w: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """The script's `guidance_scale_embedding` (from LatentConsistencyModelPipeline)."""
    w = w * 1000.0
    half_dim = embedding_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -emb)
    emb = w.to(torch.float32)[:, None] * emb[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)


class ReferenceStep:
    """diffusers' LCD step (train_lcm_distill_sd_wds.py; `lora_rank` > 0: train_lcm_distill_lora_sd_wds.py)."""

    def __init__(self, setup: Setup, lora_rank: int, accelerator: Any, lr: float = 1e-6) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler

        self.accelerator, self.lora = accelerator, lora_rank > 0
        device = accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision,
                                                                                torch.float32)
        # script 1.: noise scheduler, alpha/sigma schedules, DDIM solver
        self.noise_scheduler = DDPMScheduler.from_config(setup.scheduler_config)
        ac = self.noise_scheduler.alphas_cumprod
        self.alpha_schedule, self.sigma_schedule = torch.sqrt(ac).to(device), torch.sqrt(1 - ac).to(device)
        self.prediction_type = setup.prediction_type
        self.topk = self.noise_scheduler.config.num_train_timesteps // 50
        self.ddim_timesteps = (torch.arange(1, 51) * self.topk - 1).to(device)  # DDIMSolver.ddim_timesteps
        prev = torch.cat([ac[:1], ac[self.ddim_timesteps.cpu()[:-1]]])
        self.ddim_alpha_cumprods_prev = prev.to(device)  # DDIMSolver.ddim_alpha_cumprods_prev
        # script 5.-6.: the teacher, frozen; 9.: cast to weight_dtype (--cast_teacher_unet)
        self.teacher_unet = copy.deepcopy(setup.teacher).requires_grad_(False)
        if self.weight_dtype != torch.float32:
            torch.nn.Module.to(self.teacher_unet, self.weight_dtype)  # ModelMixin.to only adds a warning
        if self.lora:
            # LoRA script 7.-8.: the student is the teacher's UNet with peft adapters (get_peft_model)
            from peft import LoraConfig, get_peft_model


            unet = copy.deepcopy(setup.teacher).requires_grad_(False)
            unet.train()
            unet = get_peft_model(unet, LoraConfig(r=lora_rank, target_modules=LORA_TARGETS, lora_alpha=lora_rank,
                                                   lora_dropout=0.0))
            self.target_unet = None
        else:
            # script 7.: unet from the teacher's config with time_cond_proj_dim, teacher weights loaded
            unet = UNet2DConditionModel.from_config(setup.teacher.config, time_cond_proj_dim=W_EMBEDDING_DIM)
            unet.load_state_dict(setup.teacher.state_dict(), strict=False)
            unet.to(device).train()
            # script 8.: target_unet, initialised from unet, train mode, no grad
            self.target_unet = UNet2DConditionModel.from_config(unet.config)
            self.target_unet.load_state_dict(unet.state_dict())
            self.target_unet.to(device).train()
            self.target_unet.requires_grad_(False)
        # script 12.: optimizer (default betas/eps, weight decay 1e-2); 14.: lr scheduler ("constant")
        params = [p for p in unet.parameters() if p.requires_grad] if self.lora else unet.parameters()
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        lr_scheduler = get_scheduler("constant", optimizer=optimizer)
        self.unet, self.optimizer, self.lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        self.ema_decay = 0.95

    def modules(self) -> list[Any]:
        return [m for m in (self.unet, self.teacher_unet, self.target_unet) if m is not None]

    def __call__(self, micro: DistillBatch) -> torch.Tensor:
        accelerator, unet, device = self.accelerator, self.unet, self.accelerator.device
        pt, alpha_schedule, sigma_schedule = self.prediction_type, self.alpha_schedule, self.sigma_schedule
        with accelerator.accumulate(unet):
            latents = micro.latents.to(self.weight_dtype)  # script 1.: latents.to(weight_dtype)
            bsz = latents.shape[0]
            # script 2.: timesteps from the DDIM solver grid (index drawn as ours: the same inputs for both)
            index = micro.draw["index"].to(device)
            start_timesteps = self.ddim_timesteps[index]
            timesteps = start_timesteps - self.topk
            timesteps = torch.where(timesteps < 0, torch.zeros_like(timesteps), timesteps)
            # script 3.: boundary scalings
            c_skip_start, c_out_start = scalings_for_boundary_conditions(start_timesteps)
            c_skip_start, c_out_start = [x[(...,) + (None,) * 3] for x in [c_skip_start, c_out_start]]
            c_skip, c_out = scalings_for_boundary_conditions(timesteps)
            c_skip, c_out = [x[(...,) + (None,) * 3] for x in [c_skip, c_out]]
            # script 4.: noise and add_noise
            noise = micro.noise.to(latents.dtype)
            noisy_model_input = self.noise_scheduler.add_noise(latents, noise, start_timesteps)
            # script 5.: w and its embedding (the LoRA script embeds none)
            w = micro.draw["w"]
            w_embedding = reference_guidance_embedding(w, W_EMBEDDING_DIM) if not self.lora else None
            w = w.reshape(bsz, 1, 1, 1).to(device=latents.device, dtype=latents.dtype)
            if w_embedding is not None:
                w_embedding = w_embedding.to(device=latents.device, dtype=latents.dtype)
            # script 6.: prompt embeds
            prompt_embeds, uncond_prompt_embeds = micro.context, micro.uncond
            # script 7.: online student prediction
            noise_pred = unet(noisy_model_input, start_timesteps, timestep_cond=w_embedding,
                              encoder_hidden_states=prompt_embeds.float()).sample
            pred_x_0 = get_predicted_original_sample(noise_pred, start_timesteps, noisy_model_input, pt,
                                                     alpha_schedule, sigma_schedule)
            model_pred = c_skip_start * noisy_model_input + c_out_start * pred_x_0
            # script 8.: teacher cond and uncond forwards under autocast (default dtype), CFG, DDIM step
            with torch.no_grad(), torch.autocast(device.type):
                cond_teacher_output = self.teacher_unet(noisy_model_input.to(self.weight_dtype), start_timesteps,
                                                        encoder_hidden_states=prompt_embeds.to(self.weight_dtype)
                                                        ).sample
                cond_pred_x0 = get_predicted_original_sample(cond_teacher_output, start_timesteps, noisy_model_input,
                                                             pt, alpha_schedule, sigma_schedule)
                cond_pred_noise = get_predicted_noise(cond_teacher_output, start_timesteps, noisy_model_input, pt,
                                                      alpha_schedule, sigma_schedule)
                uncond_teacher_output = self.teacher_unet(
                    noisy_model_input.to(self.weight_dtype), start_timesteps,
                    encoder_hidden_states=uncond_prompt_embeds.to(self.weight_dtype)).sample
                uncond_pred_x0 = get_predicted_original_sample(uncond_teacher_output, start_timesteps,
                                                               noisy_model_input, pt, alpha_schedule, sigma_schedule)
                uncond_pred_noise = get_predicted_noise(uncond_teacher_output, start_timesteps, noisy_model_input,
                                                        pt, alpha_schedule, sigma_schedule)
                pred_x0 = cond_pred_x0 + w * (cond_pred_x0 - uncond_pred_x0)
                pred_noise = cond_pred_noise + w * (cond_pred_noise - uncond_pred_noise)
                alpha_cumprod_prev = extract_into_tensor(self.ddim_alpha_cumprods_prev, index, pred_x0.shape)
                x_prev = alpha_cumprod_prev.sqrt() * pred_x0 + (1.0 - alpha_cumprod_prev).sqrt() * pred_noise
            # script 9.: target prediction under autocast(weight_dtype) (LoRA script: the online unet itself)
            target_unet = self.target_unet if self.target_unet is not None else unet
            with torch.no_grad():
                autocast = (torch.autocast(device.type, dtype=self.weight_dtype)
                            if self.weight_dtype != torch.float32 else contextlib.nullcontext())
                with autocast:
                    target_noise_pred = target_unet(x_prev.float(), timesteps, timestep_cond=w_embedding,
                                                    encoder_hidden_states=prompt_embeds.float()).sample
                pred_x_0 = get_predicted_original_sample(target_noise_pred, timesteps, x_prev, pt, alpha_schedule,
                                                         sigma_schedule)
                target = c_skip * x_prev + c_out * pred_x_0
            # script 10.: huber loss
            loss = torch.mean(torch.sqrt((model_pred.float() - target.float()) ** 2 + 0.001**2) - 0.001)
            # script 11.: backward, clip, optimizer and scheduler steps
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        # script 12.: update_ema (the LoRA script has no target network)
        if accelerator.sync_gradients and self.target_unet is not None:
            with torch.no_grad():
                for targ, src in zip(self.target_unet.parameters(), unet.parameters()):
                    targ.detach().mul_(self.ema_decay).add_(src, alpha=1 - self.ema_decay)
        return loss.detach()


# ---- ours: the trainer's step on the trainer's networks ----

class OurStep:
    """`distill_step` on networks built as `train_distill` builds them (full model + EMA target, or LoRA)."""

    def __init__(self, setup: Setup, lora_rank: int, accelerator: Any, lr: float = 1e-6,
                 gradient_checkpointing: bool = False, channels_last: bool = False, compile: bool = False,
                 teacher_autocast: str | None = None, objective: Any = None) -> None:
        from diffusers.optimization import get_scheduler

        device = accelerator.device
        lora = lora_rank > 0
        self.teacher = None if lora else copy.deepcopy(setup.teacher)
        student, target = student_and_target(setup.teacher, lora_rank, None, W_EMBEDDING_DIM, gradient_checkpointing)
        trainable = [p for p in student.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, lr)
        lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=1)
        student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
        if target is not None:
            target.to(device)
        online = accelerator.unwrap_model(student)
        if self.teacher is not None:
            half_precision_teacher(self.teacher, accelerator.mixed_precision, teacher_autocast)
        speed_options([student, target, self.teacher], channels_last, compile)
        inputs = lambda unet, c: {"encoder_hidden_states": c}  # noqa: E731

        student_net = ConsistencyUNet(student, inputs, base=online)
        teacher_net = (ConsistencyUNet(online, inputs, adapters_off=True, autocast=teacher_autocast) if lora
                       else ConsistencyUNet(self.teacher, inputs, autocast=teacher_autocast))
        target_net = student_net if lora else ConsistencyUNet(target, inputs)
        self.student, self.target = student, target
        self.parts = DistillStep(accelerator, objective or setup.loss(), student, student_net, teacher_net,
                                 target_net, optimizer, lr_scheduler, trainable, target, 0.95, 1.0)

    def modules(self) -> list[Any]:
        return [m for m in (self.student, self.teacher, self.target) if m is not None]

    @property
    def optimizer(self) -> Any:
        return self.parts.optimizer

    def __call__(self, micro: DistillBatch) -> torch.Tensor:
        return distill_step(self.parts, [micro])["loss"]


# ---- measurement ----

def resident_bytes(side: Any) -> int:
    """Bytes of the tensors a side keeps between steps: weights, buffers, gradients, optimiser state."""
    seen: dict[int, int] = {}
    tensors: list[torch.Tensor] = []
    for module in side.modules():
        tensors += list(module.parameters()) + list(module.buffers())
        tensors += [p.grad for p in module.parameters() if p.grad is not None]
    for state in side.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def make_side(kind: str, setup: Setup, lora_rank: int, accelerator: Any, options: dict[str, bool]) -> Any:
    loss_fn = setup.loss()
    with torch.device(accelerator.device):  # new weights (the student's guidance projection) start on the device
        if kind == "reference":
            return ReferenceStep(setup, lora_rank, accelerator)
        return OurStep(setup, lora_rank, accelerator, objective=loss_fn, **options)


def time_interleaved(setup: Setup, lora_rank: int, accelerator: Any, batch: int, warmup: int, steps: int,
                     device: str, options: dict[str, Any], exclude: int = 0) -> dict[str, Any]:
    """Build both sides, run warmup + steps steps alternating their order; median step times, losses, memory
    (CUDA: less `exclude` bytes that belong to neither side)."""
    sides = {kind: make_side(kind, setup, lora_rank, accelerator, options) for kind in ("ours", "reference")}
    loss_fn = setup.loss()
    times: dict[str, list[float]] = {k: [] for k in sides}
    losses: dict[str, list[float]] = {k: [] for k in sides}
    peaks: dict[str, float] = {k: 0.0 for k in sides}
    for step in range(warmup + steps):
        micro = step_inputs(setup, loss_fn, batch, step, device)
        order = list(sides) if step % 2 == 0 else list(sides)[::-1]
        for kind in order:
            full_size.synchronize(device)
            full_size.reset_peak_memory(device)
            t0 = time.perf_counter()
            loss = sides[kind](micro)
            full_size.synchronize(device)
            times[kind].append(time.perf_counter() - t0)
            losses[kind].append(round(float(loss), 6))
            if device.startswith("cuda") and step >= warmup:
                peaks[kind] = max(peaks[kind], torch.cuda.max_memory_allocated())
    out: dict[str, Any] = {}
    for kind, side in sides.items():
        timed = times[kind][warmup:] or times[kind]
        med = statistics.median(timed)
        out[kind] = {"median_step_s": round(med, 4), "steps_per_s": round(1 / med, 3),
                     "step_s": [round(t, 4) for t in times[kind]], "first_step_s": round(times[kind][0], 3),
                     "loss": losses[kind], "resident_mb": round(resident_bytes(side) / 2**20)}
    if device.startswith("cuda"):
        for kind in sides:
            other = [k for k in sides if k != kind][0]
            out[kind]["peak_memory_mb"] = round((peaks[kind] - resident_bytes(sides[other]) - exclude) / 2**20)
    out["ratio_ours_over_reference"] = round(out["ours"]["steps_per_s"] / out["reference"]["steps_per_s"], 3)
    return out


class ResidentPeak:
    """The peak resident set size (MiB) of this process while the block runs, sampled every millisecond from
    /proc/self/statm by a thread (ru_maxrss cannot tell: its peak may come from loading, before the steps)."""

    def __enter__(self) -> "ResidentPeak":
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start_mb = self.peak_mb = self._rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page / 2**20

    def _watch(self) -> None:
        while not self._done.wait(0.001):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


def memory_worker(kind: str, what: str, lora_rank: int, batch: int, steps: int, device: str, dtype: str,
                  options: dict[str, Any]) -> dict[str, float]:
    """Peak resident set size (MiB) while one side, built alone in this process, runs `steps` steps."""
    accelerator = make_accelerator(device, dtype)
    setup = build_setup(what, device)
    side = make_side(kind, setup, lora_rank, accelerator, options)
    loss_fn = setup.loss()
    inputs = [step_inputs(setup, loss_fn, batch, step, device) for step in range(steps)]
    with ResidentPeak() as rss:
        for micro in inputs:
            side(micro)
    return {"peak_memory_mb": round(rss.peak_mb), "before_steps_mb": round(rss.start_mb),
            "step_peak_over_before_mb": round(rss.peak_mb - rss.start_mb)}


def memory_in_subprocesses(args: argparse.Namespace, lora_rank: int) -> dict[str, dict[str, float]]:
    """CPU peak memory of each side, each in a fresh process."""
    results = {}
    for kind in ("ours", "reference"):
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [sys.executable, __file__, "--memory-worker", kind, "--worker-out", tmp.name,
                   "--lora-rank-worker", str(lora_rank), "--family", args.family, "--batch-size",
                   str(args.batch_size), "--memory-steps", str(args.memory_steps), "--device", args.device,
                   "--dtype", args.dtype] + (["--full-size", args.full_size] if args.full_size else [])
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--channels-last"] if args.channels_last else []
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            cmd += ["--teacher-autocast", args.teacher_autocast] if args.teacher_autocast else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"memory worker {kind} failed:\n{proc.stderr[-2000:]}")
            results[kind] = json.loads(Path(tmp.name).read_text())
    return results


def our_options(args: argparse.Namespace) -> dict[str, Any]:
    """`OurStep`'s speed options from the command line."""
    return {"channels_last": args.channels_last, "compile": args.compile,
            "gradient_checkpointing": args.gradient_checkpointing, "teacher_autocast": args.teacher_autocast}


def make_accelerator(device: str, dtype: str) -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=not device.startswith("cuda"), mixed_precision=MIXED_PRECISION[dtype])


def compare(args: argparse.Namespace, lora_rank: int, setup: Setup | None = None, exclude: int | None = None
            ) -> dict[str, Any]:
    """One variant (LCD full or LoRA): interleaved timing, then memory (CPU: in subprocesses). `exclude`: bytes on
    the device that belong to neither side (default: the setup's source teacher)."""
    options = our_options(args)
    accelerator = make_accelerator(args.device, args.dtype)
    setup = setup or build_setup(args.full_size or args.family, args.device)
    if exclude is None:
        exclude = sum(p.numel() * p.element_size() for p in setup.teacher.parameters())
    result = time_interleaved(setup, lora_rank, accelerator, args.batch_size, args.warmup, args.steps, args.device,
                              options, exclude)
    accelerator.free_memory()
    if not args.device.startswith("cuda") and args.memory_steps > 0:
        for kind, mem in memory_in_subprocesses(args, lora_rank).items():
            result[kind].update(mem)
    if "peak_memory_mb" in result["ours"]:
        result["memory_ours_over_reference"] = round(
            result["ours"]["peak_memory_mb"] / max(result["reference"]["peak_memory_mb"], 1), 3)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="emoji-64")
    p.add_argument("--full-size", choices=sorted(full_size.SHAPES), default=None)
    p.add_argument("--variants", nargs="+", default=["lcd", "lcd-lora"], choices=["lcd", "lcd-lora"])
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (family), 4 (full size)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps of each side")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each side")
    p.add_argument("--memory-steps", type=int, default=3, help="CPU: steps of each memory process (0: no memory)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(MIXED_PRECISION), default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action="store_true", help="ours: NHWC UNets")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the UNets (first step = compile)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="ours: checkpoint the student")
    p.add_argument("--teacher-autocast", choices=["bf16", "fp16"], default=None,
                   help="ours: the teacher's forwards under autocast to this dtype (DistillConfig.teacher_autocast)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/train-vs-reference-*.json)")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--lora-rank-worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or (4 if args.full_size else 32)
    # the reference's target forward asks CPU autocast for float32, which torch declines with a warning
    warnings.filterwarnings("ignore", message=".*CPU Autocast.*")
    warnings.filterwarnings("ignore", message=".*In CPU autocast, but the target dtype is not supported.*")
    if args.memory_worker:
        options = our_options(args) | {"compile": False}
        result = memory_worker(args.memory_worker, args.full_size or args.family, args.lora_rank_worker,
                               args.batch_size, args.memory_steps, args.device, args.dtype, options)
        Path(args.worker_out).write_text(json.dumps(result))
        return
    results = {}
    for variant in args.variants:
        results[variant] = compare(args, LORA_RANK if variant == "lcd-lora" else 0)
        print(variant, json.dumps({k: v for k, v in results[variant].items()}), flush=True)
    write_report("train-vs-reference", args, batch_size=args.batch_size, warmup=args.warmup, steps=args.steps,
                 threads=torch.get_num_threads(), reference="diffusers 58eb52c0 examples/consistency_distillation/"
                 "train_lcm_distill_sd_wds.py (+ _lora_ for lcd-lora)", options=our_options(args),
                 variants=results)


if __name__ == "__main__":
    main()
