"""`distill_step`, the one module-level LCD step the trainer and the benchmarks run, against a restatement of the
trainer's step as it was written inline before it moved out (same seed, tiny UNet): bit-exact after one and two
steps, full model with an EMA target and LoRA."""

import copy

import pytest
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

from rglcd.objectives import DistillBatch, LCDLoss
from rglcd.training.step import ConsistencyUNet, DistillStep, distill_step, student_and_target
from rglcd.training.teacher import TeacherConfig, build_unet


def _inputs(step: int) -> DistillBatch:
    g = torch.Generator().manual_seed(100 + step)
    loss_fn = _loss()
    draw = loss_fn.draw(4, g)
    z0, ctx = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 5, 32, generator=g)
    return DistillBatch(z0, torch.randn(z0.shape, generator=g), ctx, torch.zeros_like(ctx), draw, texts=["x"] * 4)


def _loss() -> LCDLoss:
    return LCDLoss(DDPMScheduler().alphas_cumprod, w_min=2.0, w_max=8.0, w_embedding_dim=16)


def _models(lora_rank: int):
    torch.manual_seed(0)
    teacher = build_unet(TeacherConfig(block_out_channels=(32, 32), attention_head_dim=4), 8, 32).eval()
    student, target = student_and_target(teacher, lora_rank, None, 16)
    return teacher, student, target


def _restated_step(teacher, student, target, optimizer, lr_scheduler, micro: DistillBatch, lora: bool) -> float:
    """The trainer's inline `train_step` before the extraction, one micro-batch, fp32, one process."""
    inputs = lambda u, c: {"encoder_hidden_states": c}  # noqa: E731
    call = lambda u: ConsistencyUNet(u, inputs)  # noqa: E731
    teacher_net = ConsistencyUNet(student, inputs, adapters_off=True) if lora else call(teacher)
    target_net = call(student) if lora else call(target)
    loss, _ = _loss()(call(student), teacher_net, target_net, micro.latents, micro.context, micro.uncond,
                      micro.noise, micro.draw, None)
    loss = loss.mean()
    loss.backward()
    trainable = [p for p in student.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if target is not None:
        with torch.no_grad():
            for p_t, p in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p.detach(), 1 - 0.95)
    return loss.item()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_distill_step_is_the_inline_step_bit_for_bit(lora_rank):
    teacher, student, target = _models(lora_rank)
    ref_student, ref_target = copy.deepcopy(student), copy.deepcopy(target)

    def optimiser(module):
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
        return opt, get_scheduler("constant_with_warmup", opt, num_warmup_steps=1)

    ref_opt, ref_sched = optimiser(ref_student)
    opt, sched = optimiser(student)
    inputs = lambda u, c: {"encoder_hidden_states": c}  # noqa: E731
    lora = lora_rank > 0
    parts = DistillStep(Accelerator(cpu=True), _loss(), student, ConsistencyUNet(student, inputs),
                        ConsistencyUNet(student, inputs, adapters_off=True) if lora else ConsistencyUNet(teacher, inputs),
                        ConsistencyUNet(student if lora else target, inputs), opt, sched,
                        [p for p in student.parameters() if p.requires_grad], target, 0.95, 1.0)
    for step in range(2):
        expected = _restated_step(teacher, ref_student, ref_target, ref_opt, ref_sched, _inputs(step), lora)
        out = distill_step(parts, [_inputs(step)])
        assert isinstance(out["loss"], torch.Tensor) and out["loss"].item() == expected
        changed = 0
        for (name, a), b in zip(student.named_parameters(), ref_student.parameters()):
            assert torch.equal(a, b), name
            changed += a.requires_grad
        assert changed > 0
        if target is not None:
            assert all(torch.equal(a, b) for a, b in zip(target.parameters(), ref_target.parameters()))
    start = _models(lora_rank)[1]
    moved = [n for (n, a), b in zip(student.named_parameters(), start.parameters()) if not torch.equal(a, b)]
    assert moved and all(("lora_" in n) == lora for n in moved), "the step must train exactly the trainable weights"


def test_teacher_autocast_runs_a_net_in_bf16_and_returns_float32():
    teacher = _models(0)[0]
    inputs = lambda u, c: {"encoder_hidden_states": c}  # noqa: E731
    net = ConsistencyUNet(teacher, inputs)
    z, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32)
    with torch.no_grad():
        exact, half = net(z, t, c, None), ConsistencyUNet(teacher, inputs, autocast="bf16")(z, t, c, None)
    assert half.dtype == torch.float32 and not torch.equal(half, exact)
    assert (half - exact).abs().max() < 0.05 * exact.abs().max()
    with pytest.raises(ValueError, match="autocast must be bf16 or fp16"):
        ConsistencyUNet(teacher, inputs, autocast="fp8")
