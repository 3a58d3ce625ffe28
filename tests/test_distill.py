"""LCD distillation on a tiny family: the student starts as the teacher, trains, resumes exactly, exports an LCM
that LatentConsistencyModelPipeline samples, and is registered in the family file."""

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rglcd.models import load_family
from rglcd.sampling import InputError, Request, generate
from rglcd.training.checkpoints import list_checkpoints
from rglcd.training.distill import DistillConfig, train_distill
from rglcd.training.step import student_from_teacher
from rglcd.training.teacher import TeacherConfig, build_unet
from tests.entry_points import run_entry_point

ROOT = Path(__file__).resolve().parents[1]


def test_student_starts_as_the_teacher():
    torch.manual_seed(0)
    teacher = build_unet(TeacherConfig(block_out_channels=(32, 32), attention_head_dim=4), 8, 384).eval()
    student = student_from_teacher(teacher, 256).eval()
    z, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 384)
    w_emb = torch.randn(2, 256)
    with torch.no_grad():
        assert torch.allclose(student(z, t, ctx, timestep_cond=w_emb).sample, teacher(z, t, ctx).sample, atol=1e-5)
    assert student.config.time_cond_proj_dim == 256


def _cfg(root, out, **kw):
    base = dict(family=str(root), output_dir=str(out), export_dir=str(root / "lcm"), batch_size=4, max_steps=4,
                warmup_steps=1, checkpoint_every=2, eval_every=4, eval_steps=2, limit_concepts=16)
    base.update(kw)
    return DistillConfig.of(**base)


def check_resume_rules(root: Path, out: Path, loss: float, capsys: pytest.CaptureFixture) -> None:
    """On a finished 4-step run in `out` (checkpoints 2 and 4, final `loss`): a resume with another learning rate
    stops from the entry point (one line naming it, exit 2, nothing written); with a truncated checkpoint-4 it goes on
    from checkpoint-2, says so, and ends with the uninterrupted run's loss (changing --eval-every and --export-dir,
    which may change)."""
    args = ["--family", str(root), "--output-dir", str(out), "--export-dir", "none", "--batch-size", "4",
            "--max-steps", "4", "--warmup-steps", "1", "--checkpoint-every", "2", "--eval-every", "0",
            "--limit-concepts", "16"]
    before = {p: p.stat().st_mtime_ns for p in out.parent.rglob("*")}
    code, _, err = run_entry_point(ROOT / "train" / "distill.py", [*args, "--learning-rate", "1e-3"])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: checkpoint {out / 'checkpoint-4'} was made with other settings "
                          "(--learning-rate: 0.0002 -> 0.001)")
    assert "--resume none" in err and "another --output-dir" in err
    assert {p: p.stat().st_mtime_ns for p in out.parent.rglob("*")} == before, "nothing written"
    weights = out / "checkpoint-4" / "model.safetensors"  # the student
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    again = train_distill(_cfg(root, out, export_dir=None, eval_every=0))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint-4 (model.safetensors is truncated" in warnings[0], warnings
    assert warnings[0].endswith(f"resuming from the newest intact one, {out / 'checkpoint-2'}")
    assert again["loss"] == loss


def test_lcd_trains_resumes_exports_and_samples(family_with_teacher, tmp_path, capsys):
    root = family_with_teacher
    full = train_distill(_cfg(root, tmp_path / "full", export_dir=str(tmp_path / "full-export")))
    assert 0 <= full["train_win_rate"] <= 1 and (tmp_path / "full" / "samples" / "step-4-heldout.png").is_file()
    first = {"unet": str((tmp_path / "full-export").resolve()), "kind": "lcm"}
    assert load_family(str(root)).member("lcm") == first
    train_distill(_cfg(root, tmp_path / "cut", stop_at=2))
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    assert load_family(str(root)).member("lcm") == first, "an unfinished run must not export or register"
    resumed = train_distill(_cfg(root, tmp_path / "cut"))
    assert resumed["loss"] == full["loss"]
    check_resume_rules(root, tmp_path / "full", full["loss"], capsys)
    a = load_file(str(tmp_path / "full-export" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(root / "lcm" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    family = load_family(str(root))
    assert family.member("lcm") == {"unet": "lcm", "kind": "lcm"}
    pipe = family.pipeline("lcm")
    assert type(pipe).__name__ == "LatentConsistencyModelPipeline" and type(pipe.scheduler).__name__ == "LCMScheduler"
    images = generate(family, "lcm", Request("red apple", steps=2, guidance_scale=4.0, num_images=2))
    assert images.shape == (2, 3, 64, 64)
    with pytest.raises(InputError, match=r"steps \(lcm\) must be a whole number between 1 and 50"):
        generate(family, "lcm", Request("red apple", steps=51))


def test_unknown_method_is_refused(family_with_teacher, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'ict2'"):
        train_distill(_cfg(family_with_teacher, tmp_path / "x", method="ict2"))


def test_lcd_lora_exports_diffusers_lora_that_the_family_loads(family_with_teacher, tmp_path):
    root = family_with_teacher
    metrics = train_distill(_cfg(root, tmp_path / "lora", export_dir=str(root / "lcm-lora"), member="lcm-lora",
                                 lora_rank=4, max_steps=2, eval_every=2, learning_rate=1e-2))
    assert metrics["steps"] == 2
    assert (root / "lcm-lora" / "pytorch_lora_weights.safetensors").is_file()
    family = load_family(str(root))
    assert family.member("lcm-lora") == {"unet": "teacher", "lora": "lcm-lora", "kind": "lcm"}
    saved = load_file(str(root / "lcm-lora" / "pytorch_lora_weights.safetensors"))
    assert any(".attn2.to_k." in k for k in saved) and any(".conv1." in k for k in saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft warns when saved keys and adapters disagree
        pipe = family.pipeline("lcm-lora")
    loaded = [k for k in pipe.unet.state_dict() if "lora_" in k]
    assert len(loaded) == len(saved), "every saved LoRA tensor must be loaded"
    plain = family.pipeline("teacher").unet
    assert not getattr(plain, "peft_config", None), "the teacher must stay without adapters"
    images = generate(family, "lcm-lora", Request("cat", steps=2, guidance_scale=1.0))
    assert images.shape == (1, 3, 64, 64)


def test_gradient_accumulation_counts_optimiser_steps(family_with_teacher, tmp_path):
    metrics = train_distill(_cfg(family_with_teacher, tmp_path / "acc", export_dir=None, batch_size=2,
                                 gradient_accumulation_steps=2, max_steps=2, checkpoint_every=1, eval_every=100,
                                 gradient_checkpointing=True))
    assert metrics["loss"] > 0
    assert [p.name for p in list_checkpoints(tmp_path / "acc")] == ["checkpoint-1", "checkpoint-2"]


def test_rg_lcd_adds_a_reward_term_with_gradient(family_with_teacher, tmp_path):
    metrics = train_distill(_cfg(family_with_teacher, tmp_path / "rg", method="rg-lcd", reward_scale=0.5,
                                 export_dir=str(tmp_path / "rg-export"), member="rg-lcm", max_steps=2, eval_every=2))
    assert "reward" in metrics and -100 <= metrics["reward"] <= 100
    assert load_family(str(family_with_teacher)).member("rg-lcm")["kind"] == "lcm"


def test_rg_lcd_on_sampler_states_trains_and_resumes(family_with_teacher, tmp_path):
    root = family_with_teacher
    kw = dict(method="rg-lcd", reward_scale=0.5, reward_states="sampler", reward_sampler_steps=3, export_dir=None,
              eval_every=0, max_steps=3)
    full = train_distill(_cfg(root, tmp_path / "full", **kw))
    data = train_distill(_cfg(root, tmp_path / "data", **(kw | {"reward_states": "data"})))
    assert -100 <= full["reward"] <= 100 and full["loss"] != data["loss"]
    train_distill(_cfg(root, tmp_path / "cut", stop_at=1, **kw))
    assert train_distill(_cfg(root, tmp_path / "cut", **kw))["loss"] == full["loss"]
    with pytest.raises(ValueError, match="reward-states sampler needs a reward"):
        train_distill(_cfg(root, tmp_path / "bad", reward_states="sampler"))
    with pytest.raises(ValueError, match="reward-states must be one of data, sampler"):
        train_distill(_cfg(root, tmp_path / "bad", **(kw | {"reward_states": "trajectory"})))
    with pytest.raises(ValueError, match="reward-sampler-steps must be"):
        train_distill(_cfg(root, tmp_path / "bad", **(kw | {"reward_sampler_steps": 0})))


def test_sampler_state_is_where_the_lcm_pipeline_stands(family_with_teacher):
    """The last step of the 4-step LatentConsistencyModelPipeline is f at sampler_state(stop=3)."""
    from diffusers import LCMScheduler

    from rglcd.consistency import consistency_output
    from rglcd.objectives import sampler_state
    from rglcd.schedule import guidance_scale_embedding

    family = load_family(str(family_with_teacher))
    torch.manual_seed(1)
    student = student_from_teacher(family.unet("teacher"), 256).eval()
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.02)  # the guidance embedding matters
    pipe = family.pipeline("teacher", unet=student, kind="lcm")
    ctx = torch.randn(2, 6, 384)
    with torch.no_grad():
        reference = pipe(prompt_embeds=ctx, num_inference_steps=4, guidance_scale=6.0, output_type="latent",
                         generator=torch.Generator().manual_seed(3)).images

    def net(z, t, c, w):
        return student(z, t, c, timestep_cond=w).sample

    g = torch.Generator().manual_seed(3)
    noise = torch.randn(reference.shape, generator=g)
    w_emb = guidance_scale_embedding(torch.full((2,), 5.0), 256)
    scheduler = LCMScheduler.from_config(family.scheduler_config)
    z, t = sampler_state(net, scheduler, noise, ctx, w_emb, 4, 3, generator=g)
    assert t.tolist() == [scheduler.timesteps[3].item()] * 2
    with torch.no_grad():
        x0 = consistency_output(net(z, t, ctx, w_emb), z, t, scheduler.alphas_cumprod, "epsilon")
    assert torch.allclose(x0, reference, atol=1e-5)
    start, t0 = sampler_state(net, scheduler, noise, ctx, w_emb, 4, 0)
    assert torch.equal(start, noise) and t0.tolist() == [scheduler.timesteps[0].item()] * 2
    with pytest.raises(ValueError, match="stop must be in"):
        sampler_state(net, scheduler, noise, ctx, w_emb, 4, 4)


def test_reward_guidance_is_differentiable_through_the_vae(tiny_emoji_family):
    from rglcd.objectives import RewardGuidance

    family = load_family(str(tiny_emoji_family))
    x0 = torch.randn(2, 4, 16, 16, requires_grad=True)
    rewards = RewardGuidance(family.reward(), family.vae)(x0, ["cat", "dog"])
    assert rewards.shape == (2,)
    rewards.sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0


def test_proxy_rm_trains_checkpoints_resumes_and_exports(family_with_teacher, tmp_path):
    from rglcd.rewards.proxy import LatentProxyReward

    root = family_with_teacher
    kw = dict(method="rg-lcd", reward_scale=0.5, proxy_rm=True, proxy_lr=1e-3)
    full = train_distill(_cfg(root, tmp_path / "full", export_dir=str(tmp_path / "export"), **kw))
    assert {"proxy_loss", "proxy_agreement", "expert_reward", "reward"} <= set(full)
    train_distill(_cfg(root, tmp_path / "cut", export_dir=None, stop_at=3, **kw))
    resumed = train_distill(_cfg(root, tmp_path / "cut", export_dir=None, **kw))
    assert resumed["loss"] == full["loss"] and resumed["proxy_loss"] == full["proxy_loss"]
    proxy = LatentProxyReward.from_pretrained(tmp_path / "export" / "proxy-rm")
    assert proxy(torch.randn(2, 4, 16, 16), torch.randn(2, 5, 384)).shape == (2,)
    warm = train_distill(_cfg(root, tmp_path / "warm", export_dir=None, max_steps=1,  # the first proxy, kept
                              proxy_weights=str(tmp_path / "export" / "proxy-rm"), proxy_variant="batch-softmax",
                              **kw))
    assert warm["proxy_loss"] >= 0
    with pytest.raises(ValueError, match="--proxy-variant must be one of reference, batch-softmax"):
        train_distill(_cfg(root, tmp_path / "bad-variant", export_dir=None, proxy_variant="listwise", **kw))
    with pytest.raises(ValueError, match="proxy-rm needs a reward"):
        train_distill(_cfg(root, tmp_path / "bad", proxy_rm=True))


def test_preference_loss_definitions():
    from rglcd.rewards.proxy import preference_loss

    expert = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    proxy = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    p0 = torch.softmax(expert[0], 0)
    kl0 = (p0 * (p0.log() - torch.log(torch.tensor([0.5, 0.5])))).sum()
    kl = preference_loss(proxy, expert, "kl")
    assert torch.allclose(kl[0], kl0) and torch.allclose(kl[1], torch.tensor(0.0), atol=1e-6)
    ce = preference_loss(proxy, expert, "ce")
    assert torch.allclose(ce, torch.tensor([0.6931472, torch.log1p(torch.exp(torch.tensor(-2.0))).item()]))


def test_validation_grids_reach_tensorboard(family_with_teacher, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_distill(_cfg(family_with_teacher, tmp_path / "tb", export_dir=None, max_steps=2, eval_every=2))
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert {"samples/train", "samples/heldout"} <= set(events.Tags()["images"])
    assert "loss" in events.Tags()["scalars"] and "heldout_win_rate" in events.Tags()["scalars"]


def test_report_to_none_writes_no_events_and_bad_trackers_are_clear(family_with_teacher, tmp_path):
    import importlib.util

    from rglcd.training.tracking import log_grids, make_accelerator

    train_distill(_cfg(family_with_teacher, tmp_path / "quiet", export_dir=None, max_steps=1, eval_every=0,
                       report_to="none"))
    assert (tmp_path / "quiet").is_dir() and not list((tmp_path / "quiet").rglob("events.out.tfevents*"))
    with pytest.raises(ValueError, match="unknown --report-to 'mlflowz'"):
        make_accelerator("mlflowz", str(tmp_path))
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ValueError, match="pip install wandb"):
            make_accelerator("wandb", str(tmp_path))

    class Tracker:  # what accelerate's WandBTracker receives: no tensorboard-only keyword arguments
        name = "wandb"

        def log_images(self, values, step, **kwargs):
            self.seen = (sorted(values), values["samples/heldout"].shape, step, kwargs)

    from PIL import Image

    Image.new("RGB", (6, 4)).save(tmp_path / "step-2-heldout.png")
    tracker = Tracker()
    accelerator = make_accelerator("none", str(tmp_path))
    accelerator.trackers = [tracker]
    log_grids(accelerator, [tmp_path / "step-2-heldout.png"], 2)
    assert tracker.seen == (["samples/heldout"], (1, 4, 6, 3), 2, {})


def test_kill_9_then_resume_latest_continues_the_same_loss(family_with_teacher, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = family_with_teacher
    args = ["--family", str(root), "--batch-size", "4", "--max-steps", "16", "--warmup-steps", "1",
            "--checkpoint-every", "2", "--eval-every", "0", "--limit-concepts", "16", "--threads", "1"]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))

    def run(out, export):
        return subprocess.Popen([sys.executable, str(repo / "train" / "distill.py"), *args, "--output-dir", str(out),
                                 "--export-dir", str(export)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    victim = run(tmp_path / "cut", tmp_path / "cut-export")
    deadline = time.time() + 120
    while not list_checkpoints(tmp_path / "cut") and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = list_checkpoints(tmp_path / "cut")
    assert done and int(done[-1].name.split("-")[1]) < 16, "the run was killed mid-way, after a checkpoint"
    assert not (tmp_path / "cut-export").exists()
    threads = torch.get_num_threads()
    try:  # the resumed and the uninterrupted run in this process (the same script, --threads 1 as the victim)
        for out in ("cut", "full"):  # --resume latest is the default
            code, printed, err = run_entry_point(repo / "train" / "distill.py", [
                *args, "--output-dir", str(tmp_path / out), "--export-dir", str(tmp_path / f"{out}-export")])
            assert code == 0, err[-2000:]
            assert ("resumed from " + str(done[-1]) in printed + err) == (out == "cut")
    finally:
        torch.set_num_threads(threads)
    cut = json.loads((tmp_path / "cut-export" / "metrics.json").read_text())
    full = json.loads((tmp_path / "full-export" / "metrics.json").read_text())
    assert cut["loss"] == full["loss"] and cut["steps"] == full["steps"] == 16


def test_name_targets_condition_teacher_and_target_on_names_on_data_and_trajectories(family_with_teacher, tmp_path,
                                                                                     monkeypatch):
    """`--target-captions name`: every sample's teacher and target states are its concept's name states while the
    student sees a phrasing of that concept, on data batches (LCD) and on teacher trajectories of names (MLCM)."""
    from PIL import Image

    from rglcd.data.batches import training_batches
    from rglcd.objectives import LCDLoss

    root = family_with_teacher
    batches = training_batches("emoji", load_family(str(root)), limit=16)
    per_concept = batches.data["context"].shape[1]
    seen = []
    real = LCDLoss.__call__

    def spy(self, student, teacher, target, latents, context, uncond, noise, draw, states=None, target_context=None):
        seen.append((context.cpu(), target_context.cpu(), states is not None))
        return real(self, student, teacher, target, latents, context, uncond, noise, draw, states, target_context)

    monkeypatch.setattr(LCDLoss, "__call__", spy)
    monkeypatch.setattr("rglcd.training.distill.cache_dir", lambda: tmp_path / "cache")  # its own trajectory sets
    kw = dict(target_captions="name", export_dir=None, eval_every=0, max_steps=2)
    train_distill(_cfg(root, tmp_path / "lcd", **kw))
    train_distill(_cfg(root, tmp_path / "mlcm", method="mlcm", trajectory_data=4, trajectory_batch=4, **kw))
    assert [s for *_, s in seen] == [False, False, True, True]
    spec = next((tmp_path / "cache" / "trajectories").glob("*/*/spec.json")).read_text()
    assert '"num_prompts": 16' in spec, "the trajectories are of the 16 concepts' names"
    names, table = batches.name_states.float(), batches.caption_states.float()
    for ctx, target_ctx, _ in seen:
        for c, t in zip(ctx, target_ctx):
            concept = int(torch.nonzero((names == t).flatten(1).all(1))[0])
            rows = table[concept * per_concept:(concept + 1) * per_concept]
            assert (rows == c).flatten(1).all(1).any(), "the student's caption is a phrasing of the same concept"
        assert not torch.equal(ctx, target_ctx)
    with pytest.raises(ValueError, match="target-captions must be one of same, name"):
        train_distill(_cfg(root, tmp_path / "bad", target_captions="names"))
    (tmp_path / "folder").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "folder" / "x.png")
    (tmp_path / "folder" / "x.txt").write_text("black square\n")
    with pytest.raises(ValueError, match="--target-captions name needs a caption table"):
        train_distill(_cfg(root, tmp_path / "bad", target_captions="name", data=str(tmp_path / "folder"),
                           limit_concepts=None))

