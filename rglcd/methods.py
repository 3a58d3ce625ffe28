"""The method registry: one `Method` per training method, and the sampler of each student kind.

A method names its objective class (`rglcd.objectives`), the kind of student it makes (the sampler a family uses
for it: `SAMPLERS`), what it needs (a teacher, a reward, teacher trajectories), the member name and demo title of
its student, and the trainer that runs it. LoRA is a flag of the distillation methods (`--lora-rank`), not a method.
Everything that differs by method is read from here: the trainer's objective and per-step settings, the CLI's
`--method` choices, the family kinds `Family.pipeline` samples, and the demo's columns.

Adding a method (docs/training.md, "Adding a method", from what TCD took): its objective in `rglcd.objectives`
(tested alone against its paper or reference), its sampler kind in `SAMPLERS` if it needs a new one, then one
`Method(...)` below with a `build_loss` that makes the objective from a `DistillConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rglcd.objectives import ICTLoss, LCDLoss, MLCMLoss, RGLCDLoss, TCDLoss


def _no_options(cfg: Any) -> dict[str, Any]:
    return {}


def _no_step_settings(loss: Any, cfg: Any, step: int) -> dict[str, float]:
    return {}


@dataclass(frozen=True)
class Method:
    """One training method.

    `loss` is the objective class the trainer optimises. `build_loss(common, cfg)` makes the distillation loss from
    the arguments every distillation loss shares, `common` (alphas_cumprod, num_ddim_timesteps, w_min, w_max,
    w_embedding_dim, loss_type, huber_c, prediction_type), and the trainer's config; for RG-LCD that is the LCD
    loss, which the trainer wraps in `RGLCDLoss` with the reward (as it does for MLCM given a reward).
    `sampler_options(cfg)` are the settings its student's sampler must share with the objective (stored in the
    member's family entry); `step_settings(loss, cfg, step)` updates the objective before optimiser step `step` and
    returns what to log (MLCM's progressive segment count).
    """

    name: str
    summary: str
    kind: str  # the student's sampler: a key of SAMPLERS
    loss: type
    member: str  # the exported student's default name in a family file (also its demo column)
    title: str  # the demo column's title
    trainer: str = "distill"  # distill (rglcd.training.distill) | ict (rglcd.training.ict)
    needs_teacher: bool = True
    reward: str = "none"  # none | optional (a --reward adds the reward term) | required (RG-LCD)
    trajectories: bool = False  # may train on cached teacher trajectories (--trajectory-data)
    in_demo: bool = True
    build_loss: Callable[[Mapping[str, Any], Any], Any] | None = None
    sampler_options: Callable[[Any], dict[str, Any]] = _no_options
    step_settings: Callable[[Any, Any, int], dict[str, float]] = _no_step_settings
    recipe: str | None = None  # the embedded family's recipe: the method's default settings (train/configs/)

    def uses_reward(self, reward_given: bool) -> bool:
        """Whether the objective has a reward term, `reward_given` saying whether the user named one."""
        return self.reward == "required" or (self.reward == "optional" and reward_given)

    def lora_member(self) -> str:
        """The default member name of the method's LoRA student ("lcm-lora")."""
        return f"{self.member}-lora"

    def lora_title(self) -> str:
        return f"{self.title}-LoRA"


def segments_at(mlcm: Any, max_steps: int, step: int) -> int:
    """MLCM segments at optimiser step `step`: `mlcm.progressive` split into equal stages over `max_steps`, else
    `mlcm.segments`."""
    if not mlcm.progressive:
        return mlcm.segments
    stages = list(mlcm.progressive)
    return int(stages[min(step * len(stages) // max(max_steps, 1), len(stages) - 1)])


def _lcd_loss(common: Mapping[str, Any], cfg: Any) -> LCDLoss:
    return LCDLoss(**common)


def _tcd_loss(common: Mapping[str, Any], cfg: Any) -> TCDLoss:
    return TCDLoss(**common)


def _mlcm_options(cfg: Any) -> dict[str, Any]:
    return {"edge_rounding": cfg.mlcm.mlcm_edges, "clean_end": cfg.mlcm.mlcm_clean_end}


def _mlcm_loss(common: Mapping[str, Any], cfg: Any) -> MLCMLoss:
    return MLCMLoss(**common, num_segments=segments_at(cfg.mlcm, cfg.optim.max_steps, 0), **_mlcm_options(cfg))


def _mlcm_step(loss: MLCMLoss, cfg: Any, step: int) -> dict[str, float]:
    loss.num_segments = segments_at(cfg.mlcm, cfg.optim.max_steps, step)
    return {"segments": loss.num_segments}


LCD = Method("lcd", "latent consistency distillation (LCM; LCM-LoRA with --lora-rank)", "lcm", LCDLoss, "lcm", "LCM",
             trajectories=True, build_loss=_lcd_loss, recipe="train/configs/emoji-64-lcd.yaml")
RG_LCD = Method("rg-lcd", "LCD minus beta x a differentiable reward of the student's prediction (RG-LCM)", "lcm",
                RGLCDLoss, "rg-lcm", "RG-LCM", reward="required", trajectories=True, build_loss=_lcd_loss,
                recipe="train/configs/emoji-64-rg-lcd.yaml")
MLCM = Method("mlcm", "multistep (segment) consistency distillation; a --reward adds the preference term", "mlcm",
              MLCMLoss, "mlcm", "MLCM", reward="optional", trajectories=True, build_loss=_mlcm_loss,
              sampler_options=_mlcm_options, step_settings=_mlcm_step, recipe="train/configs/emoji-64-mlcm.yaml")
TCD = Method("tcd", "trajectory consistency distillation (TCD): student and target map to z_s, s drawn from 0 to t_n",
             "tcd", TCDLoss, "tcd", "TCD", trajectories=True, in_demo=False, build_loss=_tcd_loss,
             recipe="train/configs/emoji-64-tcd.yaml")
ICT = Method("ict", "improved consistency training from data, no teacher (iCT)", "cm", ICTLoss, "ict", "iCT",
             trainer="ict", needs_teacher=False, in_demo=False, recipe="train/configs/emoji-64-ict.yaml")

METHODS: dict[str, Method] = {m.name: m for m in (LCD, RG_LCD, MLCM, TCD, ICT)}


def get_method(name: str | None) -> Method:
    """The registered method `name`; ValueError naming the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; this version implements: {', '.join(METHODS)}")
    return METHODS[name]


def trainer_methods(trainer: str) -> tuple[str, ...]:
    """The names of the methods that `trainer` ("distill" | "ict") runs."""
    return tuple(m.name for m in METHODS.values() if m.trainer == trainer)


def demo_members() -> tuple[str, ...]:
    """The students the demo shows beside the teacher, one column each, in registry order."""
    return tuple(m.member for m in METHODS.values() if m.in_demo)


def member_titles() -> dict[str, str]:
    """Column titles of every method's default member and its LoRA variant."""
    titles = {m.member: m.title for m in METHODS.values()}
    return titles | {m.lora_member(): m.lora_title() for m in METHODS.values() if m.trainer == "distill"}

