"""The distillation step and the networks it calls, one module-level function the trainer, the tests and the
benchmarks all run (`distill_step`).

A student is the teacher's UNet plus a guidance projection (full model, with an EMA target) or the teacher with
peft LoRA adapters (the teacher is then the student with its adapters off, the target the online student under
no_grad, as LCM-LoRA). `ConsistencyUNet` calls any of them as the objectives' `Net`; the objective (a registry
method's: `rglcd.methods`) gives the loss of a `DistillBatch`; `distill_step` accumulates it over micro-batches,
steps the optimiser, updates the EMA target and the networks the objective trains beside the student
(`SideUpdate`: RG-LCD's latent proxy RM).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel

from rglcd.objectives import DistillBatch
from rglcd.training.ema import ema_update

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


COND_PROJ_INITS = ("zero", "random")  # the guidance projection's start (the trainer's --cond-proj-init)


def student_from_teacher(teacher: UNet2DConditionModel, w_embedding_dim: int, cond_proj_init: str = "zero"
                         ) -> UNet2DConditionModel:
    """The teacher's UNet plus a guidance projection `time_embedding.cond_proj`: zero-initialised ("zero": at start
    it computes exactly the teacher) or left at its layer's default init ("random", as diffusers' LCD script)."""
    if cond_proj_init not in COND_PROJ_INITS:
        raise ValueError(f"--cond-proj-init must be {' or '.join(COND_PROJ_INITS)}, got {cond_proj_init!r}")
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




def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with its fused kernel (CUDA and CPU; weight decay 0 by default, the reference LCD script's is 1e-2).
    On this CPU the fused step of the emoji-64 student takes 5.7 ms against 22 ms for the default kernel
    (docs/results.md, "Training speed against diffusers"); a killed-and-resumed run repeats the uninterrupted one
    exactly (tests/test_distill.py)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=bool(params))


def half_precision_teacher(teacher: UNet2DConditionModel, mixed_precision: str | None,
                           autocast: str | None = None) -> UNet2DConditionModel:
    """The frozen teacher cast in place to the mixed-precision dtype (bf16 / fp16), as the reference script's
    `--cast_teacher_unet`, or in fp32 training to the `--teacher-autocast` dtype: autocast would otherwise cast its
    fp32 weights again at every forward."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = half.get(mixed_precision or "no", half.get(autocast or ""))
    # nn.Module.to: diffusers' ModelMixin.to warns about fp32-kept modules, of which the UNet has none
    return teacher if dtype is None else torch.nn.Module.to(teacher, dtype)


def speed_options(unets: list[torch.nn.Module | None], channels_last: bool, compile: bool) -> None:
    """Optional speed settings on the UNets in place: NHWC memory format, `torch.compile` of their forwards."""
    for unet in unets:
        if unet is None:
            continue
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        if compile:
            unet.compile()




def save_lora(unet: UNet2DConditionModel, folder: Path) -> None:
    """The UNet's peft adapters as diffusers LoRA safetensors (`pytorch_lora_weights.safetensors`)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)


class ConsistencyUNet(torch.nn.Module):
    """A diffusers UNet called as the objectives' `Net`: `net(z_t (B,C,h,w), t (B,), context (B,L,D), w_embedding
    (B,E) or None) -> the UNet's output (B,C,h,w)`.

    `unet` may be accelerate-wrapped (`base`: its unwrapped model; default `unet`); `unet_inputs(base, context)`
    gives the conditioning keywords (a family's `unet_inputs`); the guidance embedding goes in only when the UNet
    takes one (`time_cond_proj_dim`). `adapters_off`: the UNet's peft adapters are disabled for the call (LCD-LoRA's
    teacher is the student's base model). `autocast` ("bf16" | "fp16"): the call runs under `torch.autocast` to that
    dtype and returns float32 (the teacher's no-grad forwards, as diffusers' LCD scripts run them).
    """

    def __init__(self, unet: torch.nn.Module, unet_inputs: Callable[[Any, torch.Tensor], dict[str, Any]],
                 base: torch.nn.Module | None = None, adapters_off: bool = False, autocast: str | None = None):
        super().__init__()
        if autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"autocast must be bf16 or fp16, got {autocast!r}")
        self.unet, self.unet_inputs, self.adapters_off = unet, unet_inputs, adapters_off
        self.base = unet if base is None else base
        self.takes_w = self.base.config.time_cond_proj_dim is not None and not adapters_off
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")

    def call(self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if not self.adapters_off:
            return self.unet(z, t.to(z.device), timestep_cond=w if self.takes_w else None,
                             **self.unet_inputs(self.base, context)).sample
        self.unet.disable_adapters()
        try:
            return self.unet(z, t.to(z.device), **self.unet_inputs(self.unet, context)).sample
        finally:
            self.unet.enable_adapters()

    def forward(self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor, w: torch.Tensor | None
                ) -> torch.Tensor:
        if self.autocast is None:
            return self.call(z, t, context, w)
        with torch.autocast(z.device.type, dtype=self.autocast):
            return self.call(z, t, context, w).float()


@dataclass
class SideUpdate:
    """One update of a network the objective trains beside the student (`rglcd.objectives.SideNetwork`, e.g.
    RG-LCD's latent proxy RM) after each micro-batch: its loss on the student's aux, backward, its optimiser's step.
    `module` is the side network as `accelerator.prepare` returned it (DDP-wrapped across processes, so its gradient
    is averaged in `backward`). Returns 0-d tensors, this process's shares of the global batch's means: the loss as
    '<name>_loss' and the side network's own scalars."""

    accelerator: Accelerator
    name: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

    def __call__(self, aux: dict[str, torch.Tensor], batch: DistillBatch) -> dict[str, torch.Tensor]:
        loss, stats = self.loss(self.module, aux, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {f"{self.name}_loss": loss.detach(), **stats}


def side_updates(objective: Any, accelerator: Accelerator) -> list[SideUpdate]:
    """The updates of the objective's side networks, each with its AdamW (no weight decay), both prepared."""
    updates = []
    for name, side in objective.side_networks().items():
        optimizer = torch.optim.AdamW(side.module.parameters(), lr=side.learning_rate, weight_decay=0.0)
        module, optimizer = accelerator.prepare(side.module, optimizer)
        updates.append(SideUpdate(accelerator, name, module, optimizer, side.loss))
    return updates


@dataclass
class DistillStep:
    """What one optimiser step of a distillation method touches: the objective (`batch_loss(student, teacher,
    target, batch) -> (loss (B,), aux)`), the networks as `Net`s, the prepared student module, its optimiser and LR
    schedule, the EMA target (None: no EMA, as LoRA), and the updates of the objective's side networks."""

    accelerator: Accelerator
    objective: Any
    student_module: torch.nn.Module
    student: Callable[..., torch.Tensor]
    teacher: Callable[..., torch.Tensor]
    target: Callable[..., torch.Tensor]
    optimizer: Any
    lr_scheduler: Any
    trainable: list[torch.nn.Parameter]
    ema_target: torch.nn.Module | None = None
    ema_decay: float = 0.95
    max_grad_norm: float = 1.0
    side_updates: list[SideUpdate] = field(default_factory=list)


def distill_step(parts: DistillStep, batches: list[DistillBatch]) -> dict[str, torch.Tensor]:
    """One optimiser step over the micro-batches `batches` (accumulated under `accelerator.accumulate`), then the
    EMA update.

    Returns 0-d tensors (no host sync), each the mean over micro-batches and processes: 'loss', 'reward' (the reward
    term, when the objective has one) and the side networks' scalars.
    """
    accelerator, n = parts.accelerator, len(batches)
    total = reward_sum = None
    side_stats: dict[str, torch.Tensor] = {}
    for batch in batches:
        with accelerator.accumulate(parts.student_module), accelerator.autocast():
            loss, aux = parts.objective.batch_loss(parts.student, parts.teacher, parts.target, batch)
            loss = loss.mean()
            if "reward" in aux:
                part = aux["reward"].mean().detach() / n
                reward_sum = part if reward_sum is None else reward_sum + part
            accelerator.backward(loss)
            if accelerator.sync_gradients and parts.max_grad_norm > 0:
                accelerator.clip_grad_norm_(parts.trainable, parts.max_grad_norm)
            parts.optimizer.step()
            parts.lr_scheduler.step()
            parts.optimizer.zero_grad(set_to_none=True)
        total = loss.detach() / n if total is None else total + loss.detach() / n
        for update in parts.side_updates:
            for k, v in update(aux, batch).items():
                side_stats[k] = side_stats.get(k, 0.0) + v / n
    if parts.ema_target is not None:
        ema_update(parts.ema_target, accelerator.unwrap_model(parts.student_module), parts.ema_decay)
    out = {"loss": total.float()} | ({} if reward_sum is None else {"reward": reward_sum}) | side_stats
    return accelerator.reduce(out, "mean")
