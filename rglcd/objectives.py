"""Training objectives as small classes (EDM's `training/loss.py` style): hyper-parameters in the constructor,
`__call__` shows how the noise level is drawn, the sample noised, the networks called and the loss formed.

Every objective follows one protocol (`Objective`): `draw(batch, generator, step)` draws the randomness of a batch's
states, `batch_loss(student, teacher, target, batch)` computes the per-sample loss and what the step reads after it
(`aux`), `at_step(step)` updates the settings that change during training, and `side_networks()` declares the
networks it trains beside the student (RG-LCD's latent proxy RM), each with its own loss.

Networks are plain callables `net(z_t (B,C,h,w), t (B,) int, context (B,L,D), w_embedding (B,E) or None) -> output`
so the same loss serves a full-model student (EMA target) and a LoRA student (teacher = adapters off). `ICTLoss`
takes a consistency function in sigma parameterisation, `net(x_sigma (B,C,H,W), sigma (B,), **cond) -> f (B,C,H,W)`
(`rglcd.networks.CMDenoiser`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rglcd.consistency import (LOSS_TYPES, consistency_distance, consistency_output, ict_huber_c, pseudo_huber,
                               segment_output)
from rglcd.rewards import training_score
from rglcd.rewards.proxy import PROXY_VARIANTS, expert_logits, preference_loss
from rglcd.schedule import (KARRAS_RHO, SIGMA_MAX, SIGMA_MIN, ddim_skip_grid, ddim_solver_step, grid_timestep,
                            guidance_scale_embedding, ict_num_scales, karras_sigmas, lognormal_interval_probs,
                            lower_edge, predicted_noise, predicted_x0, segment_edges)

Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class SideNetwork:
    """A network an objective trains beside the student (RG-LCD's latent proxy RM; PCM's discriminator would be
    the next): `module`, its AdamW learning rate, and `loss(module, aux, batch) -> (loss (), {name: 0-d tensor})`,
    run after each micro-batch on the student's `aux` (the trainer backpropagates the loss into `module`, which it
    may have wrapped for data parallelism, and steps its optimiser)."""

    module: torch.nn.Module
    learning_rate: float
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor], Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    folder: str  # exported beside the student under this name (`module.save_pretrained`)


class Objective:
    """The objective protocol, with the defaults of an objective that has no changing settings and no side
    networks. Subclasses define `draw(batch, generator, step) -> {name: (B,) tensor or scalar}` and
    `batch_loss(student, teacher, target, batch) -> (loss (B,), aux)`."""

    def at_step(self, step: int) -> dict[str, float]:
        """Update the settings that change during training before optimiser step `step`; return what to log."""
        return {}

    def side_networks(self) -> dict[str, SideNetwork]:
        """The networks this objective trains beside the student, by name."""
        return {}


@dataclass
class DistillBatch:
    """One (micro-)batch of a distillation step: data latents (B,C,h,w) and noise (B,C,h,w), or `states`
    (z_{t_{n+k}}, z_{t_n}) from teacher trajectories (then latents and noise are None); text states (B,L,D) and
    unconditional states (B,L,D); the loss's `draw`; the prompts; the generator the batch was drawn from (an
    objective that needs more randomness, as RG-LCD's sampler states, goes on drawing from it); `target_context`
    (B,L,D), the text states the teacher and the target see when they are not the student's (`--target-captions
    name`: each concept's bare name while the student sees a phrasing of it); and `share` (rank, processes): the
    batch is rows [rank*B, (rank+1)*B) of a global batch every process drew alike from `generator`
    (`rglcd.training.global_batch`), so randomness drawn later for the batch is drawn for the global batch too."""

    latents: torch.Tensor | None
    noise: torch.Tensor | None
    context: torch.Tensor
    uncond: torch.Tensor
    draw: dict[str, torch.Tensor]
    states: tuple[torch.Tensor, torch.Tensor] | None = None
    texts: list[str] = field(default_factory=list)
    generator: torch.Generator | None = None
    target_context: torch.Tensor | None = None
    share: tuple[int, int] = (0, 1)  # (rank, processes): rows rank*B.. of the global batch `generator` drew


@dataclass
class LCDLoss(Objective):
    """Latent consistency distillation (LCM paper, Alg. 1; diffusers' train_lcd_distill scripts).

    Draw a grid index n and w ~ U[w_min, w_max]; noise z_0 to t_{n+k}; one teacher DDIM step with CFG (scale 1+w)
    applied to both x0 and eps lands on t_n; the loss is d(f_student(z_{t_{n+k}}), f_target(z_{t_n})).
    """

    alphas_cumprod: torch.Tensor
    num_ddim_timesteps: int = 50
    w_min: float = 2.0
    w_max: float = 8.0
    w_embedding_dim: int = 256
    loss_type: str = "huber"
    huber_c: float = 0.001
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        t = len(self.alphas_cumprod)
        self.grid = ddim_skip_grid(t, self.num_ddim_timesteps)
        self.k = t // self.num_ddim_timesteps

    def draw(self, batch: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        """The randomness of one step: grid indices, start/end timesteps, guidance w (LCM convention), each (B,)."""
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
                 states: tuple[torch.Tensor, torch.Tensor] | None = None, target_context: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample loss (B,) and {'student_x0': the student's clean estimate (for reward guidance), 'target':
        the target network's output (no grad)}.

        `states` = (z_{t_{n+k}}, z_{t_n}) taken from the teacher's own sampling trajectories replaces noising the
        data `latents` and the teacher step (then `latents`, `noise` and `teacher` are not used).
        `target_context` (B,L,D): the text states of the teacher step and the target (None: `context`, as LCD).
        """
        ac, pt = self.alphas_cumprod, self.prediction_type
        dev = context.device
        start, end, w = draw["start"].to(dev), draw["end"].to(dev), draw["w"].to(dev)
        w_emb = guidance_scale_embedding(w, self.w_embedding_dim).to(context.dtype)
        target_context = context if target_context is None else target_context
        if states is None:
            alpha, sigma = ac[start].sqrt().view(-1, 1, 1, 1), (1 - ac[start]).sqrt().view(-1, 1, 1, 1)
            z_start = alpha.to(latents) * latents + sigma.to(latents) * noise
            z_end = self.teacher_step(teacher, z_start, start, target_context, uncond_context, w)
        else:
            z_start, z_end = states
        with torch.no_grad():  # before the student: its activations are gone before the student's graph is built
            f_target = self.output(target(z_end, end, target_context, w_emb), z_end, end, draw)
        out = student(z_start, start, context, w_emb)
        f_student = self.output(out, z_start, start, draw)
        loss = consistency_distance(f_student, f_target, self.loss_type, self.huber_c)
        return loss, {"student_x0": consistency_output(out, z_start, start, ac, pt), "target": f_target}

    def batch_loss(self, student: Net, teacher: Net, target: Net, batch: DistillBatch
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`self(...)` on a `DistillBatch`: the one call the training step makes of every distillation objective."""
        return self(student, teacher, target, batch.latents, batch.context, batch.uncond, batch.noise, batch.draw,
                    batch.states, batch.target_context)


@dataclass
class MLCMLoss(LCDLoss):
    """Multistep latent consistency distillation (MLCM/TLCM): the LCD step made segment-wise.

    The grid splits into `num_segments` segments (`rglcd.schedule.segment_edges`); inside one, the student maps
    z_t to the segment's lower edge (`segment_output`), and the target maps the teacher's z_{t_n} to the same edge,
    which is z_{t_n} itself when t_n is the edge. Edges lie on grid points, so a step never crosses one. With the
    defaults (`edge_rounding` "floor", `clean_end` "ddim") this is phased consistency distillation's target; with
    "round" and "lcm" it is this package's first MLCM (one segment is then LCD exactly). `num_segments` may change
    during training (`progressive`, e.g. 8 -> 4 -> 2: `at_step`).
    """

    num_segments: int = 8
    edge_rounding: str = "floor"  # floor (PCM) | round
    clean_end: str = "ddim"  # ddim (PCM: DDIM jump to alphas_cumprod[0]) | lcm (LCD boundary scalings)
    progressive: tuple[int, ...] | None = None  # segments per stage, equal stages over total_steps (None: fixed)
    total_steps: int = 1

    def at_step(self, step: int) -> dict[str, float]:
        """The progressive schedule: `progressive` split into equal stages over `total_steps`, the stage of optimiser
        step `step` sets `num_segments`."""
        if self.progressive:
            stages = list(self.progressive)
            self.num_segments = int(stages[min(step * len(stages) // max(self.total_steps, 1), len(stages) - 1)])
        return {"segments": self.num_segments}

    def output(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
               draw: dict[str, torch.Tensor]) -> torch.Tensor:
        edges = segment_edges(self.num_segments, self.num_ddim_timesteps, self.edge_rounding)
        edge = grid_timestep(lower_edge(draw["index"] + 1, edges), len(self.alphas_cumprod),
                             self.num_ddim_timesteps)
        return segment_output(model_output, sample, timesteps, edge.to(sample.device), self.alphas_cumprod,
                              self.prediction_type, self.clean_end)


@dataclass
class TCDLoss(LCDLoss):
    """Trajectory consistency distillation (TCD; Zheng et al. 2024, arXiv 2402.19159, Sec. 4.1): the LCD step with
    the trajectory consistency function f(z_t, t, s), which maps z_t to z_s on the PF-ODE for any s <= t.

    Per sample, s is drawn uniformly among the skipping-step grid's points from 0 to t_n (m ~ U{0, ..., n},
    s = max(grid[m] - k, 0)); the student maps z_{t_{n+k}} to z_s and the target maps the
    teacher's z_{t_n} to the same s. f is the paper's first-order semi-linear form (exponential integrator):
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) x0_hat, h = lambda_s - lambda_t, lambda = log(alpha /
    sigma), which is the DDIM jump alpha_s x0_hat + sigma_s eps_hat with the network's own estimates
    (`segment_output`). s = 0 is the clean end: `clean_end` "lcm" gives LCD's boundary scalings there (the LCD
    target exactly), "ddim" a jump to alphas_cumprod[0]. s = t_n makes the target z_{t_n} itself.
    """

    clean_end: str = "lcm"  # lcm | ddim

    def draw(self, batch: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        """LCD's draw, then each sample's s (B,) timesteps: uniform over the grid points from 0 to its t_n."""
        out = super().draw(batch, generator, step)
        m = (torch.rand(batch, generator=generator) * (out["index"] + 1)).floor().long()
        out["s"] = (self.grid[m] - self.k).clamp_min(0)
        return out

    def output(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
               draw: dict[str, torch.Tensor]) -> torch.Tensor:
        """f(z_t, t, s) (B,C,h,w): z_t mapped to the draw's s."""
        return segment_output(model_output, sample, timesteps, draw["s"].to(sample.device), self.alphas_cumprod,
                              self.prediction_type, self.clean_end)


@dataclass
class RewardGuidance:
    """The expert reward of RG-LCD's term: R(decode(x0), prompt), differentiable through the frozen VAE.

    `reward` takes images in [0,1] (B,3,H,W) and prompts, and is scored on its training scale
    (`rglcd.rewards.training_score`: the RG-LCD reference's reward values).
    """

    reward: torch.nn.Module
    vae: torch.nn.Module

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0,1] (B,3,H,W) of scaled latents (B,C,h,w)."""
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample.float()
        return ((decoded + 1) / 2).clamp(0, 1)

    def __call__(self, student_x0: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards (B,) of the decoded one-step predictions `student_x0` (B,C,h,w), scaled latents."""
        return training_score(self.reward, self.decode(student_x0), prompts)


@dataclass
class ProxyPreference:
    """The latent proxy RM of RG-LCD (paper Algorithm 4): the student's proxy reward and the proxy's update.

    `rglcd.rewards.proxy` describes the two variants. "reference": the student maximises the proxy's cosine on
    unscaled latents (latents / the VAE's scaling_factor); the proxy learns, on `batch` prompts drawn from the
    batch, the expert's pairwise preferences among {student prediction, target prediction, data latent} from the
    expert's logits (`expert_logits`), summing the pairs' two-way KL ("kl") or cross-entropy ("ce").
    "batch-softmax": the proxy's logit on scaled latents, the whole batch, one K-way `loss` against the expert's
    training score at `temperature`.
    """

    guidance: RewardGuidance
    variant: str = "reference"  # reference | batch-softmax
    loss: str = "kl"  # kl | ce
    temperature: float = 1.0
    batch: int = 16

    def __post_init__(self) -> None:
        if self.variant not in PROXY_VARIANTS:
            raise ValueError(f"unknown proxy variant {self.variant!r}: use {' or '.join(PROXY_VARIANTS)}")

    def latents(self, z: torch.Tensor) -> torch.Tensor:
        """What the proxy sees of scaled latents (B,C,h,w): unscaled ones for the reference, else as they are."""
        return z / self.guidance.vae.config.scaling_factor if self.variant == "reference" else z

    def student_reward(self, proxy: torch.nn.Module, x0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The proxy reward (B,) of the student's clean estimates `x0` (scaled latents), with grad w.r.t. x0."""
        proxy = getattr(proxy, "module", proxy)  # an accelerate/DDP wrapper: the model itself
        z = self.latents(x0)
        return proxy.cosine(z, context) if self.variant == "reference" else proxy(z, context)

    def __call__(self, proxy: torch.nn.Module, candidates: list[torch.Tensor], context: torch.Tensor,
                 prompts: list[str], generator: torch.Generator, share: tuple[int, int] = (0, 1)
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(loss (), proxy logits (b,K), expert scores (b,K), weight) of K candidates (each (B,C,h,w), scaled
        latents, no grad) for B prompts; the expert scores their decodes under no grad.

        `share` (rank, processes): the B prompts are this process's rows of a global batch (`DistillBatch.share`).
        The loss is this process's share of the global batch's mean: averaged across processes (DDP's gradient
        all-reduce) it is the one-process loss of the global batch; `values (b,).sum() * weight` is the same share
        of any per-prompt value's mean."""
        rank, world = share
        scale, count = 1, len(prompts)
        if self.variant == "reference":  # `batch` prompts of the global batch, drawn alike on every process
            n = len(prompts)
            keep = torch.randperm(n * world, generator=generator)[:self.batch].tolist()
            mine = [i - rank * n for i in keep if rank * n <= i < (rank + 1) * n]
            # a process holding none of them still runs the proxy (weight 0): DDP's all-reduce needs every process
            scale, count, keep = (world if mine else 0), len(keep), mine or [0]
            candidates, context = [c[keep] for c in candidates], context[keep]
            prompts = [prompts[i] for i in keep]
        b, k = len(prompts), len(candidates)
        flat = torch.stack(candidates, 1).flatten(0, 1)
        flat_prompts = [p for p in prompts for _ in range(k)]
        with torch.no_grad():
            images = self.guidance.decode(flat)
            expert = (expert_logits(self.guidance.reward, images, flat_prompts, getattr(proxy, "module", proxy))
                      if self.variant == "reference" else training_score(self.guidance.reward, images, flat_prompts))
        scores = proxy(self.latents(flat), context.repeat_interleave(k, 0)).view(b, k)
        expert = expert.view(b, k).float()
        kind = f"pairwise-{self.loss}" if self.variant == "reference" else self.loss
        loss = preference_loss(scores, expert, kind, self.temperature)
        return (loss.sum() * scale) / count, scores, expert, scale / count


@torch.no_grad()
def sampler_state(student: Net, scheduler: Any, noise: torch.Tensor, context: torch.Tensor,
                  w_embedding: torch.Tensor | None, steps: int, stop: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the student's own `steps`-step sampler stands after its first `stop` steps (0 <= stop < steps), from
    standard normal `noise` (B,C,h,w): (z_t (B,C,h,w), t (B,) int). `scheduler` is the student's diffusers sampler
    (LCMScheduler for an LCM: each step is f(z_t, t) re-noised to the next timestep, `generator` drawing the noise).

    RG-LCD's on-policy reward states (`reward_states="sampler"`): the reward then scores f(z_t, t) on the states
    few-step sampling visits, instead of on noised data latents.
    """
    if not 0 <= stop < steps:
        raise ValueError(f"stop must be in [0, {steps}), got {stop}")
    scheduler.set_timesteps(steps, device=noise.device)
    z = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:stop]:
        out = student(z, t.expand(len(z)), context, w_embedding)
        z = scheduler.step(out, t, z, generator=generator, return_dict=False)[0]
    return z, scheduler.timesteps[stop].expand(len(z)).to(noise.device)


@dataclass
class OnPolicyStates:
    """RG-LCD's on-policy reward states (`reward_states="sampler"`): the student's clean estimate, with grad, at a
    state its own `steps`-step sampler visits (`sampler_state`, stopping after 0..steps-1 steps drawn uniformly),
    from fresh noise of `latent_shape` (C,h,w). `scheduler` is the student's diffusers sampler."""

    scheduler: Any
    steps: int
    latent_shape: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    w_embedding_dim: int = 256
    prediction_type: str = "epsilon"

    def __call__(self, student: Net, context: torch.Tensor, w: torch.Tensor, generator: torch.Generator,
                 share: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """x0 (B,C,h,w) for text states `context` (B,L,D) at guidance `w` (B,), LCM convention; `share` (rank,
        processes): the batch's rows of the global batch (`DistillBatch.share`)."""
        dev, (rank, world), b = context.device, share, len(context)
        stop = int(torch.randint(0, self.steps, (), generator=generator))
        noise = torch.randn((b * world, *self.latent_shape), generator=generator)[rank * b:(rank + 1) * b].to(dev)
        # the sampler's re-noising draws at its own batch's size: several processes each take their own generator,
        # so that they differ (matching the one-process global batch there would need the sampler's noise drawn here)
        renoise = generator if world == 1 else torch.Generator().manual_seed(
            int(torch.randint(2 ** 62, (), generator=generator)) + rank)
        w_emb = guidance_scale_embedding(w.to(dev), self.w_embedding_dim).to(context.dtype)
        z, t = sampler_state(student, self.scheduler, noise, context, w_emb, self.steps, stop, renoise)
        return consistency_output(student(z, t, context, w_emb), z, t, self.alphas_cumprod.to(dev),
                                  self.prediction_type)


@dataclass
class RGLCDLoss(Objective):
    """Reward-guided distillation (RG-LCD, Li et al. 2024, eq. 9): a distillation loss minus `beta` x a
    differentiable reward of the student's clean estimate.

    `distill` is the LCD loss (RG-LCM) or the MLCM loss (MLCM's preference term). The reward is the expert's
    (`guidance`: decode with the VAE, score on the training scale) or, when `proxy` is given, the latent proxy RM's
    (`preference.student_reward`, RG-LCD Algorithm 4). It scores the student's one-step prediction from the
    distillation batch's noised data latents (the paper), or with `states` (`OnPolicyStates`) a state of the
    student's own few-step sampler. The proxy is a side network (`side_networks`), trained at `proxy_lr` after
    each micro-batch by `proxy_loss`.
    """

    distill: LCDLoss
    guidance: RewardGuidance
    beta: float = 1.0
    states: OnPolicyStates | None = None
    proxy: torch.nn.Module | None = None
    preference: ProxyPreference | None = None
    proxy_lr: float = 1e-4

    def __post_init__(self) -> None:
        if (self.proxy is None) != (self.preference is None):
            raise ValueError("a proxy reward needs both the proxy model and its ProxyPreference")

    def draw(self, batch: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        """The distillation loss's randomness (the reward's own is drawn from the batch's generator after it)."""
        return self.distill.draw(batch, generator, step)

    def at_step(self, step: int) -> dict[str, float]:
        return self.distill.at_step(step)

    def side_networks(self) -> dict[str, SideNetwork]:
        """The latent proxy RM, when the reward is the proxy's."""
        return {} if self.proxy is None else {"proxy": SideNetwork(self.proxy, self.proxy_lr, self.proxy_loss, "proxy-rm")}

    def proxy_loss(self, proxy: torch.nn.Module, aux: dict[str, torch.Tensor], batch: DistillBatch
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One update's loss of the latent proxy RM (`proxy`: the model or its data-parallel wrapper; RG-LCD
        Algorithm 4): the expert scores the candidates {student prediction, target prediction, data latent} of each
        prompt and the proxy learns its preferences (`ProxyPreference`). Returns the loss () and 0-d tensors, this
        process's shares of the global batch's means: how often the proxy's favourite is the expert's, and the
        expert's reward of the student's prediction."""
        x0 = aux["student_x0"].detach()
        candidates = [x0, aux["target"].to(x0.dtype)] + ([batch.latents] if batch.latents is not None else [])
        loss, scores, expert, weight = self.preference(proxy, candidates, batch.context, batch.texts,
                                                       batch.generator, batch.share)
        agree = (scores.argmax(-1) == expert.argmax(-1)).float().sum() * weight
        return loss, {"proxy_agreement": agree, "expert_reward": expert[:, 0].sum() * weight}

    def reward(self, x0: torch.Tensor, batch: DistillBatch) -> torch.Tensor:
        """Rewards (B,) of clean latents `x0` (B,C,h,w) for the batch's prompts: the expert's or the proxy's."""
        if self.proxy is None:
            return self.guidance(x0, batch.texts)
        return self.preference.student_reward(self.proxy, x0, batch.context)

    def batch_loss(self, student: Net, teacher: Net, target: Net, batch: DistillBatch
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample loss (B,): distillation loss - beta x reward; aux as the distillation loss's plus 'reward'
        (B,), the reward term before scaling."""
        loss, aux = self.distill.batch_loss(student, teacher, target, batch)
        x0 = aux["student_x0"] if self.states is None else self.states(student, batch.context, batch.draw["w"],
                                                                      batch.generator, batch.share)
        rewards = self.reward(x0, batch)
        return loss - self.beta * rewards, aux | {"reward": rewards}


@contextlib.contextmanager
def shared_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on the global RNG (CPU, and `device`'s if CUDA) seeded with `seed`, restoring the RNG after.

    Two forwards of one network, each in such a block with the same seed, draw the same dropout masks; the RNG the
    rest of the program sees is untouched, and the masks depend only on the seed (so a resumed run repeats them).
    """
    cuda = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for dev in cuda:
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        yield


NOISE_SAMPLINGS = ("lognormal", "uniform")  # how ICTLoss draws a step's grid interval (iCT's | CT's)


@dataclass
class ConsistencyBatch:
    """One batch of consistency training: clean samples (B,C,H,W), noise (B,C,H,W), the loss's `draw`, and the
    network's conditioning keywords `cond` (text states or class labels)."""

    latents: torch.Tensor
    noise: torch.Tensor
    draw: dict[str, Any]
    cond: dict[str, Any] = field(default_factory=dict)


@dataclass
class ICTLoss(Objective):
    """Improved consistency training (Song & Dhariwal 2023): a consistency model from data, no teacher.

    At optimiser step k the Karras grid has N(k) points (the doubling curriculum `ict_num_scales`, or `fixed_scales`);
    draw an interval i (discretised lognormal over log sigma, or uniform) and one noise z, and pull the network at
    sigma_{i+1} towards itself at sigma_i under stop-gradient, on the same x + sigma z: loss
    d(f(x + sigma_{i+1} z, sigma_{i+1}), sg f(x + sigma_i z, sigma_i)) / (sigma_{i+1} - sigma_i), with d the
    pseudo-Huber distance (c = 0.00054 sqrt(dim)) or the squared L2 mean (the original CT's 'l2'). Both forwards
    run in `shared_randomness` with the draw's dropout seed, so they use the same dropout masks.
    """

    total_steps: int
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = KARRAS_RHO
    p_mean: float = -1.1
    p_std: float = 2.0
    s0: int = 10
    s1: int = 1280
    loss_type: str = "huber"  # huber | l2
    noise_sampling: str = "lognormal"  # lognormal | uniform
    fixed_scales: int | None = None  # N for every step (no curriculum); None: the curriculum
    huber_c: float | None = None  # None: 0.00054 sqrt(dim)

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}: use {' or '.join(LOSS_TYPES)}")
        if self.noise_sampling not in NOISE_SAMPLINGS:
            raise ValueError(f"unknown noise_sampling {self.noise_sampling!r}: use {' or '.join(NOISE_SAMPLINGS)}")

    def num_scales(self, step: int) -> int:
        """Grid points N at global optimiser step `step` (never a per-process counter)."""
        return self.fixed_scales or ict_num_scales(step, self.total_steps, self.s0, self.s1)

    def draw(self, batch: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor | int]:
        """The randomness of one step: interval indices (B,), their sigmas (B,) float32 and weights
        1 / (sigma_{i+1} - sigma_i) (B,), the grid size N and a dropout seed."""
        n = self.num_scales(step)
        sigmas = karras_sigmas(n, self.sigma_min, self.sigma_max, self.rho)
        if self.noise_sampling == "lognormal":
            index = torch.multinomial(lognormal_interval_probs(sigmas, self.p_mean, self.p_std), batch,
                                      replacement=True, generator=generator)
        else:
            index = torch.randint(0, n - 1, (batch,), generator=generator)
        lo, hi = sigmas[index], sigmas[index + 1]
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        return {"index": index, "sigma_lo": lo.float(), "sigma_hi": hi.float(), "weight": (1 / (hi - lo)).float(),
                "num_scales": n, "dropout_seed": seed}

    def __call__(self, net: Callable[..., torch.Tensor], x0: torch.Tensor, noise: torch.Tensor,
                 draw: dict[str, torch.Tensor | int], **cond: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted loss (B,) for clean samples `x0` and noise `noise` (B,C,H,W); `cond` goes to `net`."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        lo, hi = draw["sigma_lo"].to(x0.device), draw["sigma_hi"].to(x0.device)
        with shared_randomness(draw["dropout_seed"], x0.device), torch.no_grad():
            target = net(x0 + lo.view(shape).to(x0) * noise, lo, **cond)
        with shared_randomness(draw["dropout_seed"], x0.device):
            pred = net(x0 + hi.view(shape).to(x0) * noise, hi, **cond)
        if self.loss_type == "huber":
            distance = pseudo_huber(pred, target, self.huber_c or ict_huber_c(x0[0].numel()))
        else:
            distance = consistency_distance(pred, target, "l2")
        return draw["weight"].to(distance) * distance

    def batch_loss(self, student: Callable[..., torch.Tensor], teacher: None, target: Callable[..., torch.Tensor],
                   batch: ConsistencyBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`self(...)` on a `ConsistencyBatch`: no teacher, and the target is the student itself under
        stop-gradient (`target` must be `student`). No aux."""
        if target is not student:
            raise ValueError("iCT's target is the student under stop-gradient: pass the student as the target")
        return self(student, batch.latents, batch.noise, batch.draw, **batch.cond), {}
