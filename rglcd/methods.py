"""The method registry: one `Method` per training method, with the settings sections it owns.

A method names its objective class (`rglcd.objectives`, one protocol: `Objective`), the kind of student it makes
(the sampler a family uses for it: `rglcd.samplers.SAMPLERS`), the settings sections it owns (collected into its
trainer's config: `rglcd.training.distill_config.DistillConfig`), what it needs (a reward, teacher trajectories), the
member name and demo title of its student, and the trainer that runs it. `Method.build` makes its complete objective,
the reward term and its side networks (the latent proxy RM) included. LoRA is a flag of the distillation methods
(`--lora-rank`), not a method. Everything that differs by method is read from here: the trainer's objective and
per-step settings, the CLI's `--method` choices and help, the family kinds `Family.pipeline` samples, and the demo's
columns.

Adding a method (docs/training.md, "Adding a method", from what TCD took): its objective in `rglcd.objectives`
(tested alone against its paper or reference), its sampler kind in `rglcd.samplers` if it needs a new one, then one
`Method(...)` below, with a settings section if it has settings of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rglcd.consistency import CLEAN_ENDS
from rglcd.objectives import (ICTLoss, LCDLoss, MLCMLoss, OnPolicyStates, ProxyPreference, RewardGuidance, RGLCDLoss,
                              TCDLoss)
from rglcd.rewards.proxy import PROXY_VARIANTS, LatentProxyReward
from rglcd.samplers import sampler_class
from rglcd.schedule import EDGE_ROUNDINGS
from rglcd.training.settings import setting


class Trainer(enum.Enum):
    """The trainer that runs a method: `DISTILL` (rglcd.training.distill, from a teacher) or `ICT`
    (rglcd.training.ict, from data); `rglcd.training.trainers.TRAINERS` maps each to its function and config."""

    DISTILL = "distill"
    ICT = "ict"


@dataclass
class RewardSettings:
    """The reward term (rg-lcd; mlcm with a --reward): loss = distillation loss - beta x reward."""

    reward: str | None = setting(None, "a reward registry name, name@weights (emoji@runs/x/reward), a mix "
                                       "('hpsv2.1=1,imagereward-clipped=0.1') or 'family'; rg-lcd: none means the "
                                       "family's reward")
    reward_scale: float = setting(1.0, "beta: the reward's weight, on the reward's training scale (rglcd.rewards)")
    reward_states: str = setting("data", "where the reward scores the student's prediction: data (the batch's "
                                         "noised data latents, the paper) | sampler (states its own sampler visits)",
                                 choices=("data", "sampler"))
    reward_sampler_steps: int = setting(4, "sampler states: the sampler's step count (each micro-batch stops after "
                                           "0 to steps-1 of them)", low=1)


@dataclass
class ProxySettings:
    """The latent proxy reward model of RG-LCD (Algorithm 4), trained online on the expert's preferences."""

    proxy_rm: bool = setting(False, "maximise a latent proxy reward model instead of the expert reward")
    proxy_lr: float = setting(1e-4, "the proxy's AdamW learning rate", low=0)
    proxy_loss: str = setting("kl", "the proxy's preference loss over {student, target, data latent}: kl | ce",
                              choices=("kl", "ce"))
    proxy_temperature: float = setting(1.0, "temperature of the expert's preference softmax", low=0)
    proxy_weights: str | None = setting(None, "a pretrained proxy (folder of LatentProxyReward.save_pretrained)")
    proxy_variant: str = setting("reference", "reference (RG-LCD's Algorithm 4 and code) | batch-softmax "
                                              "(rglcd.rewards.proxy)", choices=PROXY_VARIANTS)
    proxy_batch: int = setting(16, "reference proxy: prompts per proxy update, drawn from the batch", low=1)


@dataclass
class MLCMSettings:
    """Multistep (segment) consistency: segments, progressive schedule, segment edges."""

    segments: int = setting(MLCMLoss.num_segments, "segments of the trajectory (one segment is LCD)", low=1)
    progressive: tuple[int, ...] | None = setting(None, "segments per stage, equal stages, e.g. 8 4 2", low=1)
    mlcm_edges: str = setting(MLCMLoss.edge_rounding, "segment edges rounded down as PCM (floor) | to the nearest "
                                                      "grid point (round: the shipped emoji-64 mlcm's)",
                              choices=EDGE_ROUNDINGS)
    mlcm_clean_end: str = setting(MLCMLoss.clean_end, "lowest segment: a DDIM jump to alphas_cumprod[0] as PCM "
                                                      "(ddim) | LCD's boundary scalings (lcm)", choices=CLEAN_ENDS)


REWARD_SECTIONS: tuple[tuple[str, type], ...] = (("rg", RewardSettings), ("proxy", ProxySettings))


@dataclass(frozen=True)
class ObjectiveParts:
    """What the trainer loads for a method's objective: the arguments every distillation loss shares (`common`:
    alphas_cumprod on the device, num_ddim_timesteps, w_min, w_max, w_embedding_dim, loss_type, huber_c,
    prediction_type), the run's length, the expert reward (None: no reward term this run), the family's scheduler
    config (the student's sampler for on-policy reward states) and the shapes a side network is built for: latents
    (C,h,w) and text states' width D."""

    common: Mapping[str, Any]
    max_steps: int
    reward: RewardGuidance | None = None
    scheduler_config: Mapping[str, Any] | None = None
    latent_shape: tuple[int, ...] = ()
    text_dim: int = 0


def _no_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _no_loss_options(settings: Mapping[str, Any], max_steps: int) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """One training method.

    `objective` is the objective class; `build(sections, parts)` makes it from the common loss arguments and
    `loss_options(sections, max_steps)` (its own fields, from its settings sections by name: `sections` maps each name
    of `sections` to its settings object), then wraps it in the reward term when the run has a reward.
    `sampler_options(sections)` are the settings its student's sampler must share with the objective (stored in the
    member's family entry). `summary` is its line in `--method`'s help.
    """

    name: str
    summary: str
    kind: str  # the student's sampler: a key of rglcd.samplers.SAMPLERS
    objective: type
    member: str  # the exported student's default name in a family file (also its demo column)
    title: str  # the demo column's title
    trainer: Trainer = Trainer.DISTILL
    sections: tuple[tuple[str, type], ...] = ()  # (config attribute, settings class) it owns
    reward: str = "none"  # none | optional (a --reward adds the reward term) | required (RG-LCD)
    trajectories: bool = False  # may train on cached teacher trajectories (--trajectory-data)
    in_demo: bool = True
    loss_options: Callable[[Mapping[str, Any], int], dict[str, Any]] = _no_loss_options
    sampler_options: Callable[[Mapping[str, Any]], dict[str, Any]] = _no_options
    recipe: str | None = None  # the embedded family's recipe: the method's default settings (train/configs/)

    def uses_reward(self, reward_given: bool) -> bool:
        """Whether the objective has a reward term, `reward_given` saying whether the user named one."""
        return self.reward == "required" or (self.reward == "optional" and reward_given)

    def settings_of(self, cfg: Any) -> dict[str, Any]:
        """{section name: its settings} of the sections this method owns, read from a trainer's config."""
        return {name: getattr(cfg, name) for name, _ in self.sections}

    def build(self, sections: Mapping[str, Any], parts: ObjectiveParts) -> Any:
        """The complete objective: the method's loss, minus beta x the reward (the expert's or the latent proxy's,
        scored on data or on sampler states) when `parts.reward` is given."""
        loss = self.objective(**parts.common, **self.loss_options(sections, parts.max_steps))
        if parts.reward is None:
            return loss
        rg, sampler = sections["rg"], None
        if rg.reward_states == "sampler":  # the student's own sampler, as its family entry will configure it
            sampler = sampler_class(self.kind).from_config({**(parts.scheduler_config or {}),
                                                            **self.sampler_options(sections)})
        return reward_term(loss, parts, rg, sections["proxy"], sampler)

    def lora_member(self) -> str:
        """The default member name of the method's LoRA student ("lcm-lora")."""
        return f"{self.member}-lora"

    def lora_title(self) -> str:
        return f"{self.title}-LoRA"


def reward_term(loss: Any, parts: ObjectiveParts, rg: RewardSettings, proxy: ProxySettings, sampler: Any = None
                ) -> RGLCDLoss:
    """`loss` minus beta x the expert's reward (`parts.reward`) or, with `proxy.proxy_rm`, a latent proxy RM's (new
    or `proxy_weights`, trained as the objective's side network), scored on the batch's noised data or (with
    `reward_states` "sampler") on the states `sampler`, the student's own, visits."""
    states = None
    if rg.reward_states == "sampler":
        states = OnPolicyStates(sampler, rg.reward_sampler_steps, parts.latent_shape, loss.alphas_cumprod,
                                loss.w_embedding_dim, loss.prediction_type)
    if not proxy.proxy_rm:
        return RGLCDLoss(loss, parts.reward, rg.reward_scale, states)
    network = (LatentProxyReward.from_pretrained(proxy.proxy_weights) if proxy.proxy_weights else
               LatentProxyReward(parts.latent_shape[0], parts.text_dim))
    preference = ProxyPreference(parts.reward, proxy.proxy_variant, proxy.proxy_loss, proxy.proxy_temperature,
                                 proxy.proxy_batch)
    return RGLCDLoss(loss, parts.reward, rg.reward_scale, states, network, preference, proxy.proxy_lr)


def _mlcm_options(sections: Mapping[str, Any]) -> dict[str, Any]:
    mlcm = sections["mlcm"]
    return {"edge_rounding": mlcm.mlcm_edges, "clean_end": mlcm.mlcm_clean_end}


def _mlcm_loss_options(sections: Mapping[str, Any], max_steps: int) -> dict[str, Any]:
    mlcm = sections["mlcm"]
    return {"num_segments": mlcm.segments, "progressive": mlcm.progressive, "total_steps": max_steps,
            **_mlcm_options(sections)}


LCD = Method("lcd", "latent consistency distillation (LCM; LCM-LoRA with --lora-rank)", "lcm", LCDLoss, "lcm", "LCM",
             trajectories=True, recipe="train/configs/emoji-64-lcd.yaml")
RG_LCD = Method("rg-lcd", "LCD minus beta x a differentiable reward of the student's prediction (RG-LCM)", "lcm",
                LCDLoss, "rg-lcm", "RG-LCM", sections=REWARD_SECTIONS, reward="required", trajectories=True,
                recipe="train/configs/emoji-64-rg-lcd.yaml")
MLCM = Method("mlcm", "multistep (segment) consistency distillation; a --reward adds the preference term", "mlcm",
              MLCMLoss, "mlcm", "MLCM", sections=(("mlcm", MLCMSettings),) + REWARD_SECTIONS, reward="optional",
              trajectories=True, loss_options=_mlcm_loss_options, sampler_options=_mlcm_options,
              recipe="train/configs/emoji-64-mlcm.yaml")
TCD = Method("tcd", "trajectory consistency distillation (TCD): student and target map to z_s, s drawn from 0 to t_n",
             "tcd", TCDLoss, "tcd", "TCD", trajectories=True, in_demo=False, recipe="train/configs/emoji-64-tcd.yaml")
ICT = Method("ict", "improved consistency training from data, no teacher (iCT)", "cm", ICTLoss, "ict", "iCT",
             trainer=Trainer.ICT, in_demo=False, recipe="train/configs/emoji-64-ict.yaml")

METHODS: dict[str, Method] = {m.name: m for m in (LCD, RG_LCD, MLCM, TCD, ICT)}


def get_method(name: str | None) -> Method:
    """The registered method `name`; ValueError naming the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; this version implements: {', '.join(METHODS)}")
    return METHODS[name]


def trainer_methods(trainer: Trainer) -> tuple[str, ...]:
    """The names of the methods that `trainer` runs."""
    return tuple(m.name for m in METHODS.values() if m.trainer is trainer)


def method_help(trainer: Trainer) -> str:
    """`--method`'s help for `trainer`'s config: each of its methods with its summary, then where the others are."""
    mine = "; ".join(f"{m.name}: {m.summary}" + (f" (recipe: {m.recipe})" if m.recipe else "")
                     for m in METHODS.values() if m.trainer is trainer)
    others = [m.name for m in METHODS.values() if m.trainer is not trainer]
    return f"{mine} (the registry, rglcd.methods; {', '.join(others)}: `--method {others[0]} --help`)"


def method_sections(trainer: Trainer) -> dict[str, type]:
    """{section name: settings class} of every section `trainer`'s methods own, in registry order."""
    out: dict[str, type] = {}
    for method in METHODS.values():
        if method.trainer is trainer:
            for name, cls in method.sections:
                if out.setdefault(name, cls) is not cls:
                    raise TypeError(f"two settings classes are named section {name!r}")
    return out


def demo_members() -> tuple[str, ...]:
    """The students the demo shows beside the teacher, one column each, in registry order."""
    return tuple(m.member for m in METHODS.values() if m.in_demo)


def member_titles() -> dict[str, str]:
    """Column titles of every method's default member and of the LoRA variant of each distillation method's."""
    titles = {m.member: m.title for m in METHODS.values()}
    return titles | {m.lora_member(): m.lora_title() for m in METHODS.values() if m.trainer is Trainer.DISTILL}
