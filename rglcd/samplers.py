"""The sampler registry: one `Sampler` per member kind, saying how a family samples a member of that kind, and the
sampling defaults a member entry may give (`MemberDefaults`).

A kind names its diffusers scheduler class and the config overrides it needs over the family's scheduler config
(`timestep_spacing="trailing"` for Hyper-SD's DDIM and SDXL-Lightning's Euler; TCDScheduler, like LCMScheduler,
reads no `timestep_spacing`, so PCM's `TCDScheduler(timestep_spacing="trailing")` is kind tcd), the pipeline it runs
through (the classifier-free-guidance StableDiffusion(XL)Pipeline, or the LCM pipeline when the UNet embeds the
guidance scale), where an `eta` goes (TCD's gamma, a scheduler config key), whether it samples at the member's fixed
`timesteps`, and whether it is a family's teacher (DDIM + CFG at many steps: front ends give it the teacher's
settings). `rglcd.models.Family.pipeline` builds every pipeline from here; nothing else asks what a kind is called.

A member entry (`rglcd.models`, `rglcd.presets`) may give its authors' sampling settings: `steps`, `guidance`
(the pipeline's guidance scale; with a guidance embedding the UNet reads w = guidance - 1), `eta` (TCD's gamma) and
`timesteps` (descending ints in [0, num_train_timesteps)). Front ends use them unless the user overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

from rglcd.scheduling_cm import CMScheduler
from rglcd.scheduling_mlcm import MLCMScheduler
from rglcd.scheduling_tcd import TCDGammaScheduler

STUDENT_MAX_STEPS = 50  # LCM-style schedulers: original_inference_steps of the 50-point skipping-step grid


@dataclass(frozen=True)
class Sampler:
    """How a member of one kind samples.

    `scheduler` is built `from_config({**family scheduler config, **config, **the member's "scheduler"})`.
    `cfg_pipeline`: always StableDiffusion(XL)Pipeline (classifier-free guidance when the guidance scale is above
    1); otherwise LatentConsistencyModelPipeline when the UNet has a guidance embedding (`time_cond_proj_dim`), the
    StableDiffusion pipeline when not (a LoRA student). SDXL families use StableDiffusionXLPipeline for every kind.
    `eta_option`: the scheduler config key that holds the member's `eta` (None: the kind takes no eta).
    `fixed_timesteps`: samples at the member's `timesteps` (the pipeline's `timesteps=`); their number is the step
    count and a step setting does not apply. `max_steps`: most steps (None: num_train_timesteps - steps_offset).
    `teacher`: a family's teacher; front ends give it the teacher's step and guidance settings.
    """

    kind: str
    scheduler: type
    summary: str
    config: Mapping[str, Any] = field(default_factory=dict)
    cfg_pipeline: bool = False
    eta_option: str | None = None
    fixed_timesteps: bool = False
    max_steps: int | None = STUDENT_MAX_STEPS
    teacher: bool = False

    def step_limit(self, scheduler_config: Mapping[str, Any]) -> int:
        """Most sampling steps under `scheduler_config` (the family's config with the member's settings)."""
        if self.max_steps is not None:
            return self.max_steps
        return int(scheduler_config.get("num_train_timesteps", 1000)) - int(scheduler_config.get("steps_offset", 0))


TRAILING = {"timestep_spacing": "trailing"}
SAMPLERS: dict[str, Sampler] = {s.kind: s for s in (
    Sampler("teacher", DDIMScheduler, "DDIM with classifier-free guidance (a family's teacher)", cfg_pipeline=True,
            max_steps=None, teacher=True),
    Sampler("lcm", LCMScheduler, "LCM multistep sampling (LCMScheduler)"),
    Sampler("mlcm", MLCMScheduler, "multistep (segment) consistency sampling (MLCMScheduler)"),
    Sampler("cm", CMScheduler, "consistency-model multistep sampling (CMScheduler, iCT)"),
    Sampler("tcd", TCDGammaScheduler, "TCD's strategic stochastic sampling (TCDScheduler, eta = gamma)",
            eta_option="gamma"),
    Sampler("ddim-trailing", DDIMScheduler, "DDIM with trailing timesteps (Hyper-SD)", TRAILING, cfg_pipeline=True,
            max_steps=None),
    Sampler("euler-trailing", EulerDiscreteScheduler, "Euler with trailing timesteps (SDXL-Lightning)", TRAILING,
            cfg_pipeline=True, max_steps=None),
    Sampler("lcm-timesteps", LCMScheduler, "LCMScheduler at the member's fixed timesteps (DMD2, Hyper-SD 1-step)",
            fixed_timesteps=True),
)}


def sampler(kind: str) -> Sampler:
    """The registry entry of member kind `kind`; ValueError naming the known kinds."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown member kind {kind!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[kind]


def sampler_class(kind: str) -> type:
    """The scheduler class that samples a member of `kind`; ValueError naming the known kinds."""
    return sampler(kind).scheduler


@dataclass(frozen=True)
class MemberDefaults:
    """A member's own sampling settings (None: not given): steps, pipeline guidance scale, eta, fixed timesteps."""

    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    timesteps: tuple[int, ...] | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.steps, self.guidance, self.eta, self.timesteps))


def member_defaults(entry: Mapping[str, Any], kind_sampler: Sampler, num_train_timesteps: int = 1000
                    ) -> MemberDefaults:
    """The sampling defaults of a member `entry` of a kind, checked: ValueError naming the bad field (steps not a
    positive int, guidance not a number >= 1, eta given to a kind without one or outside [0, 1], timesteps not
    strictly descending ints in [0, num_train_timesteps), or missing for a fixed-timestep kind)."""
    steps, guidance, eta, timesteps = (entry.get(k) for k in ("steps", "guidance", "eta", "timesteps"))
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive whole number, got {steps!r}")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or guidance < 1):
        raise ValueError(f"guidance must be a pipeline guidance scale >= 1 (1: none; diffusers' pipelines guide "
                         f"only above 1, so an author's 0 is 1 here), got {guidance!r}")
    if eta is not None:
        if kind_sampler.eta_option is None:
            raise ValueError(f"eta is given but kind {kind_sampler.kind!r} takes none")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be a number between 0 and 1, got {eta!r}")
    if timesteps is not None:
        ok = (isinstance(timesteps, (list, tuple)) and timesteps
              and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < num_train_timesteps
                      for t in timesteps) and all(a > b for a, b in zip(timesteps, timesteps[1:])))
        if not ok:
            raise ValueError(f"timesteps must be strictly descending whole numbers in [0, {num_train_timesteps}), "
                             f"got {timesteps!r}")
    if kind_sampler.fixed_timesteps and timesteps is None:
        raise ValueError(f"kind {kind_sampler.kind!r} samples at fixed timesteps: the member must give 'timesteps'")
    if timesteps is not None and not kind_sampler.fixed_timesteps:
        raise ValueError(f"timesteps are given but kind {kind_sampler.kind!r} samples at a step count; use kind "
                         f"{next(k for k, s in SAMPLERS.items() if s.fixed_timesteps)!r}")
    return MemberDefaults(steps, None if guidance is None else float(guidance), None if eta is None else float(eta),
                          None if timesteps is None else tuple(timesteps))
