"""Training objectives as small classes (EDM's `training/loss.py` style): hyper-parameters in the constructor,
`__call__` shows how the noise level is drawn, the sample noised, the networks called and the loss formed.

Networks are plain callables `net(z_t (B,C,h,w), t (B,) int, context (B,L,D), w_embedding (B,E) or None) -> output`
so the same loss serves a full-model student (EMA target) and a LoRA student (teacher = adapters off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rglcd.consistency import consistency_distance, consistency_output, segment_output
from rglcd.schedule import (ddim_skip_grid, ddim_solver_step, grid_timestep, guidance_scale_embedding, lower_edge,
                            predicted_noise, predicted_x0, segment_edges)

Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class LCDLoss:
    """Latent consistency distillation (LCM paper, Alg. 1; diffusers' train_lcd_distill scripts).

    Draw a grid index n and w ~ U[w_min, w_max]; noise z_0 to t_{n+k}; one teacher DDIM step with CFG (scale 1+w)
    applied to both x0 and eps lands on t_n; the loss is d(f_student(z_{t_{n+k}}), f_target(z_{t_n})).
    """

    alphas_cumprod: torch.Tensor
    num_ddim_timesteps: int = 50
    w_min: float = 5.0
    w_max: float = 15.0
    w_embedding_dim: int = 256
    loss_type: str = "huber"
    huber_c: float = 0.001
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        t = len(self.alphas_cumprod)
        self.grid = ddim_skip_grid(t, self.num_ddim_timesteps)
        self.k = t // self.num_ddim_timesteps

    def draw(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The randomness of one step: grid indices, start/end timesteps, guidance w (LCM convention)."""
        index = torch.randint(0, self.num_ddim_timesteps, (batch,), generator=generator)
        start = self.grid[index]
        w = self.w_min + (self.w_max - self.w_min) * torch.rand(batch, generator=generator)
        return {"index": index, "start": start, "end": (start - self.k).clamp_min(0), "w": w}

    def output(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
               draw: dict[str, torch.Tensor]) -> torch.Tensor:
        """The consistency function's value f(z_t, t) (B,C,h,w) from a network output: here the clean estimate."""
        return consistency_output(model_output, sample, timesteps, self.alphas_cumprod, self.prediction_type)

    @torch.no_grad()
    def teacher_step(self, teacher: Net, z_start: torch.Tensor, start: torch.Tensor, context: torch.Tensor,
                     uncond_context: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """One DDIM step of the teacher with CFG scale 1+w on x0 and eps, t_{n+k} -> t_n: z_{t_n} (B,C,h,w)."""
        ac, pt = self.alphas_cumprod, self.prediction_type
        both = teacher(torch.cat([z_start, z_start]), torch.cat([start, start]),
                       torch.cat([context, uncond_context]), None)  # cond and uncond in one batched forward
        cond, uncond = both.chunk(2)
        x0_c, x0_u = predicted_x0(cond, start, z_start, ac, pt), predicted_x0(uncond, start, z_start, ac, pt)
        eps_c, eps_u = predicted_noise(cond, start, z_start, ac, pt), predicted_noise(uncond, start, z_start, ac, pt)
        wv = w.view(-1, 1, 1, 1).to(z_start)
        return ddim_solver_step(x0_c + wv * (x0_c - x0_u), eps_c + wv * (eps_c - eps_u), start - self.k,
                                ac).to(z_start.dtype)

    def __call__(self, student: Net, teacher: Net, target: Net, latents: torch.Tensor, context: torch.Tensor,
                 uncond_context: torch.Tensor, noise: torch.Tensor, draw: dict[str, torch.Tensor],
                 states: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample loss (B,) and {'student_x0': the student's clean estimate (for reward guidance), 'target':
        the target network's output (no grad)}.

        `states` = (z_{t_{n+k}}, z_{t_n}) taken from the teacher's own sampling trajectories replaces noising the
        data `latents` and the teacher step (then `latents`, `noise` and `teacher` are not used).
        """
        ac, pt = self.alphas_cumprod, self.prediction_type
        dev = context.device
        start, end, w = draw["start"].to(dev), draw["end"].to(dev), draw["w"].to(dev)
        w_emb = guidance_scale_embedding(w, self.w_embedding_dim).to(context.dtype)
        if states is None:
            alpha, sigma = ac[start].sqrt().view(-1, 1, 1, 1), (1 - ac[start]).sqrt().view(-1, 1, 1, 1)
            z_start = alpha.to(latents) * latents + sigma.to(latents) * noise
            z_end = self.teacher_step(teacher, z_start, start, context, uncond_context, w)
        else:
            z_start, z_end = states
        out = student(z_start, start, context, w_emb)
        f_student = self.output(out, z_start, start, draw)
        with torch.no_grad():
            f_target = self.output(target(z_end, end, context, w_emb), z_end, end, draw)
        loss = consistency_distance(f_student, f_target, self.loss_type, self.huber_c)
        return loss, {"student_x0": consistency_output(out, z_start, start, ac, pt), "target": f_target}


@dataclass
class MLCMLoss(LCDLoss):
    """Multistep latent consistency distillation (MLCM/TLCM): the LCD step made segment-wise.

    The grid splits into `num_segments` segments (`rglcd.schedule.segment_edges`); inside one, the student maps
    z_t to the segment's lower edge (`segment_output`), and the target maps the teacher's z_{t_n} to the same edge,
    which is z_{t_n} itself when t_n is the edge. Edges lie on grid points, so a step never crosses one. One segment
    is LCD exactly. `num_segments` may change during training (the progressive schedule, e.g. 8 -> 4 -> 2).
    """

    num_segments: int = 8

    def output(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
               draw: dict[str, torch.Tensor]) -> torch.Tensor:
        edges = segment_edges(self.num_segments, self.num_ddim_timesteps)
        edge = grid_timestep(lower_edge(draw["index"] + 1, edges), len(self.alphas_cumprod),
                             self.num_ddim_timesteps)
        return segment_output(model_output, sample, timesteps, edge.to(sample.device), self.alphas_cumprod,
                              self.prediction_type)


@dataclass
class RewardGuidance:
    """The reward term of RG-LCD: R(decode(f_student(z_{t_{n+k}})), prompt), differentiable through the frozen VAE.

    The RG-LCD loss is `LCDLoss - scale * RewardGuidance`; `reward` takes images in [0,1] (B,3,H,W) and prompts.
    """

    reward: torch.nn.Module
    vae: torch.nn.Module
    scale: float = 1.0

    def __call__(self, student_x0: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards (B,) of the decoded one-step predictions `student_x0` (B,C,h,w), scaled latents."""
        decoded = self.vae.decode(student_x0 / self.vae.config.scaling_factor).sample.float()
        return self.reward(((decoded + 1) / 2).clamp(0, 1), prompts)
