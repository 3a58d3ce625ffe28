"""The sampler registry: the diffusers scheduler class that samples each student kind (`SAMPLERS`).

A family member's `kind` names its sampler; a family's teacher (kind `TEACHER_KIND`) samples with DDIM + CFG.
"""

from __future__ import annotations

from diffusers import LCMScheduler

from rglcd.scheduling_cm import CMScheduler
from rglcd.scheduling_mlcm import MLCMScheduler
from rglcd.scheduling_tcd import TCDGammaScheduler

SAMPLERS: dict[str, type] = {"lcm": LCMScheduler, "mlcm": MLCMScheduler, "cm": CMScheduler, "tcd": TCDGammaScheduler}
"""The diffusers scheduler class of each student kind. A family's teacher (kind "teacher") samples with DDIM + CFG
instead."""
TEACHER_KIND = "teacher"


def sampler_class(kind: str) -> type:
    """The scheduler class that samples a student of `kind`; ValueError naming the known kinds."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown student kind {kind!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[kind]
