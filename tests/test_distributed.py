"""Two processes (torchrun, gloo on the CPU) train as one process at twice the batch: `--batch-size` is the
per-process batch, the global batch is drawn once per step and sliced per rank, every trained network is averaged
across ranks (docs/training.md, "Multi-process training"). One torchrun launch runs lcd, lcd-LoRA, rg-lcd with the
latent proxy RM, mlcm, tcd and iCT (and records what rank 1 writes), then resumes a launch of train/distill.py itself that
was killed with SIGKILL; one process runs each case at twice the batch.

Float tolerance. After step 1 both runs hold the first moment of the same gradient at the same weights: they agree
to ~4e-5 relative (one process on 1 and on 2 threads: ~8e-5; a per-rank draw, the old behaviour: 0.3 to 1). After
that Adam turns the rounding of a gradient that is nearly zero (a cancellation: |g| ~ 1e-7 where most are ~1e-2)
into a step of the full learning rate, of either sign: the weights after 3 steps differ by up to 3e-4 of the
one-process run's movement from step 1 to step 3 with these flags, and by 4% (LoRA, one sign flipped at step 1) in
a run without the warm-up. The test teacher's GroupNorms have 4 channels per group: with one channel per group the
biases before them have an exactly zero gradient, all rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from rglcd.testing import free_port
from rglcd.training.cli_args import requested_method, run_trainer
from rglcd.training.distill import DistillConfig
from rglcd.training.trainers import trainer_for

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
LAUNCH_TIMEOUT_S = 240
COMMON = ["--max-steps", "3", "--learning-rate", "1e-3", "--warmup-steps", "4", "--export-dtype", "fp32", "--seed", "0",
          "--checkpoint-every", "1", "--limit-concepts", "16", "--threads", "1", "--resume", "none"]  # last lr: 3/4
CASES = {  # case: (flags, per-process batch)
    "lcd": (["--eval-every", "3", "--eval-steps", "2", "--report-to", "tensorboard"], 8),
    "lcd-lora": (["--lora-rank", "4", "--eval-every", "0", "--report-to", "none"], 2),
    # 3 proxy prompts of a global batch of 4: the ranks hold unequal shares of them
    "rg-lcd-proxy": (["--method", "rg-lcd", "--reward-scale", "0.5", "--proxy-rm", "--proxy-lr", "1e-3",
                      "--proxy-batch", "3", "--eval-every", "0", "--report-to", "none"], 2),
    "mlcm": (["--method", "mlcm", "--segments", "2", "--eval-every", "0", "--report-to", "none"], 2),
    "tcd": (["--method", "tcd", "--eval-every", "0", "--report-to", "none"], 2),  # its s is drawn per global batch
    # iCT's trainer (its own config: no warm-up); dropout 0, since each rank draws its own dropout masks
    "ict": (["--method", "ict", "--dropout", "0", "--block-out-channels", "32", "32", "--attention-head-dim", "4",
             "--eval-every", "0", "--report-to", "none"], 2),
}
COMMONS = {"ict": [a for a in COMMON if a not in ("--warmup-steps", "4")]}  # a case's flags beside COMMON's
GRADIENT_TOLERANCE = 1e-3  # relative; measured: 2 processes ~4e-5, 1 process on 1 and 2 threads ~8e-5
TOLERANCE = 0.15  # of the one-process run's movement from step 1 to 3; measured <= 3e-4, 0.042 (LoRA) without warm-up


def child_env() -> dict[str, str]:
    """The test's environment for a launched process: the worktree importable, one thread each, offline."""
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def torchrun(args: list[str], logs: Path) -> subprocess.Popen:
    """Start a 2-process torchrun on a free port, each rank's output in `logs`/<run>/attempt_0/<rank>/."""
    return subprocess.Popen([*TORCHRUN, "--master_port", str(free_port()), "--log-dir", str(logs), "--redirects",
                             "3", *args], env=child_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    """Wait for `proc` (a hang fails after LAUNCH_TIMEOUT_S instead of blocking the suite)."""
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail(f"{what} did not finish in {LAUNCH_TIMEOUT_S} s")
    assert proc.returncode == 0, f"{what} failed:\n{out[-3000:]}"


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers (each in its own session) and torchrun itself."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def rank_log(logs: Path, rank: int) -> str:
    """Rank `rank`'s stdout and stderr of the one run logged under `logs`."""
    (folder,) = logs.glob(f"*/attempt_0/{rank}")
    return "".join((folder / name).read_text() for name in ("stdout.log", "stderr.log"))


def case_args(family: Path, out: Path, case: str, batch: int) -> list[str]:
    return [*COMMONS.get(case, COMMON), *CASES[case][0], "--family", str(family), "--batch-size", str(batch),
            "--member", case, "--output-dir", str(out / case / "run"), "--export-dir", str(out / case / "export")]


@pytest.fixture(scope="module")
def family(tiny_emoji_family: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny emoji family with a tiny teacher whose GroupNorms have 4 channels per group."""
    from diffusers import UNet2DConditionModel

    from rglcd.training.teacher import TeacherConfig, build_unet

    root = tmp_path_factory.mktemp("mp") / "family"
    shutil.copytree(tiny_emoji_family, root)
    config = build_unet(TeacherConfig(block_out_channels=(32, 32), attention_head_dim=4), 16, 384).config
    torch.manual_seed(0)
    UNet2DConditionModel.from_config({**config, "norm_num_groups": 8}).save_pretrained(root / "teacher")
    return root


def resume_args(family: Path, out: Path) -> list[str]:
    """train/distill.py's lcd case at its per-process batch, written under `out`/cut (run) and `out`/cut-export."""
    return [*case_args(family, out, "lcd", CASES["lcd"][1]), "--member", "lcd-resumed", "--output-dir",
            str(out / "cut"), "--export-dir", str(out / "cut-export"), "--eval-every", "0"]  # the last of a flag wins


def kill_after_checkpoint_2(family: Path, out: Path) -> list[str]:
    """Launch train/distill.py's lcd case as 2 processes for 100 steps, SIGKILL them once checkpoint-2 is written
    (before checkpoint-4), and return the checkpoints left. A constant learning rate after the warm-up and draws
    seeded per step: nothing depends on --max-steps, so the longer run is the same run."""
    victim = torchrun([str(ROOT / "train" / "distill.py"), *resume_args(family, out), "--max-steps", "100",
                       "--checkpoint-every", "2"], out / "victim-logs")
    deadline = time.time() + LAUNCH_TIMEOUT_S
    while not (out / "cut" / "checkpoint-2").is_dir() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    kill_tree(victim)
    return sorted(p.name for p in (out / "cut").glob("checkpoint-*"))


@pytest.fixture(scope="module")
def runs(family: Path) -> Path:
    """Every case trained by 1 process at twice its batch (in this process, first: it fills the data cache the
    launched processes then read) and by 2 processes at its batch (one launch). Before that launch, the lcd case is
    launched as 2 processes and killed with SIGKILL after checkpoint-2; the launch ends by resuming it with
    `--resume latest` (what is left after the kill: killed.json)."""
    out = family.parent / "runs"
    threads = torch.get_num_threads()
    try:
        for case, (_, batch) in CASES.items():
            args = case_args(family, out / "one", case, 2 * batch)
            trainer = trainer_for(requested_method(args))
            assert run_trainer(trainer.train, trainer.config, argv=args, inputs=trainer.inputs) == 0
    finally:
        torch.set_num_threads(threads)
    (out / "killed.json").write_text(json.dumps(kill_after_checkpoint_2(family, out)))
    args = [str(ROOT / "tests" / "distributed_distill.py"), str(out / "two"), str(out / "writes")]
    for case, (_, batch) in CASES.items():
        args += ["--", *case_args(family, out / "two", case, batch)]
    args += ["--", *resume_args(family, out), "--resume", "latest"]
    finish(torchrun(args, out / "logs"), "the 2-process runs")
    return out


def states(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint but the RNG states: the student (or LoRA UNet), the proxy RM, the optimisers'
    moments, the EMA target, keyed by file and name."""
    found: dict[str, torch.Tensor] = {}
    for path in sorted(checkpoint.iterdir()):
        if path.suffix == ".safetensors":
            found |= {f"{path.name}:{k}": v for k, v in load_file(path).items()}
        elif path.name.startswith(("optimizer", "custom_checkpoint")):
            state = torch.load(path, weights_only=True)
            state = state.get("state", state)
            found |= {f"{path.name}:{k}:{n}": v for k, group in state.items() if isinstance(group, dict)
                      for n, v in group.items() if isinstance(v, torch.Tensor) and v.ndim}
            found |= {f"{path.name}:{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return found


def drift(one: Path, two: Path) -> dict[str, float]:
    """Per checkpoint file: |two - one| at step 3 over |one(step 3) - one(step 1)| (norms over the file)."""
    end, start, other = states(one / "checkpoint-3"), states(one / "checkpoint-1"), states(two / "checkpoint-3")
    assert end.keys() == other.keys() and end
    out: dict[str, list[torch.Tensor]] = {}
    for key, value in end.items():
        parts = out.setdefault(key.split(":")[0], [torch.zeros((), dtype=torch.float64)] * 2)
        parts[0] = parts[0] + (other[key].double() - value.double()).square().sum()
        parts[1] = parts[1] + (value.double() - start[key].double()).square().sum()
    return {name: (diff / moved).sqrt().item() for name, (diff, moved) in out.items() if moved > 0}


def gradient_gap(one: Path, two: Path) -> dict[str, float]:
    """Per optimiser: |two - one| / |one| of the first moment after step 1, (1 - beta1) x the averaged gradient of
    the same weights."""
    one_state, two_state = states(one / "checkpoint-1"), states(two / "checkpoint-1")
    out: dict[str, float] = {}
    for name in {k.split(":")[0] for k in one_state if k.endswith(":exp_avg")}:
        keys = [k for k in one_state if k.startswith(name + ":") and k.endswith(":exp_avg")]
        a, b = (torch.cat([s[k].double().flatten() for k in keys]) for s in (one_state, two_state))
        out[name] = ((b - a).norm() / a.norm()).item()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_distributed_two_processes_end_where_one_process_at_twice_the_batch_ends(runs, case):
    one, two = runs / "one" / case / "run", runs / "two" / case / "run"
    gaps = gradient_gap(one, two)
    assert gaps.keys() == ({"optimizer.bin", "optimizer_1.bin"} if "proxy" in case else {"optimizer.bin"})
    assert max(gaps.values()) < GRADIENT_TOLERANCE, gaps
    found = drift(one, two)
    ema_target = {"custom_checkpoint_1.pkl"} if case not in ("lcd-lora", "ict") else set()  # iCT's EMA: a list
    trained = {"model.safetensors", "optimizer.bin"} | ema_target | (
        {"model_1.safetensors", "optimizer_1.bin"} if "proxy" in case else set())
    assert trained <= found.keys(), found
    assert max(found.values()) < TOLERANCE, found
    one, two = (json.loads((runs / n / case / "export" / "metrics.json").read_text()) for n in ("one", "two"))
    if "lr" in one:  # the distillation trainer's warm-up counts optimiser steps, not processes x steps
        assert two["lr"] == pytest.approx(one["lr"]) == 0.75e-3
    for key in ("loss", "reward", "proxy_loss", "proxy_agreement", "expert_reward", "num_scales"):
        if key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), key


def test_distributed_rank_0_alone_writes_shows_progress_and_validates(runs):
    writes = json.loads((runs / "writes.1.json").read_text())
    # accelerate's save_state on every rank makes the checkpoint folder and its parents (exist_ok), then saves the
    # rank's own RNG state there (torch.save to a path writes from C++: no audit event, as safetensors' writes)
    folders = [w.split(" ", 1)[1] for w in writes if w.startswith("os.mkdir") and ".checkpoint-" in w]
    assert folders and all(w.startswith("os.mkdir") and any(f.startswith(w.split(" ", 1)[1]) for f in folders)
                           for w in writes), writes
    lcd = runs / "two" / "lcd"
    assert sorted(p.name for p in (lcd / "run" / "samples").iterdir()) == ["step-3-heldout.png", "step-3-train.png"]
    assert list((lcd / "run" / "distill").glob("events.out.tfevents.*"))
    main, other = rank_log(runs / "logs", 0), rank_log(runs / "logs", 1)
    assert main.count("step 3: train_win_rate") == 1 and "step 3:" not in other
    assert "train: 100%" in main and "train:" not in other


def test_distributed_kill_9_then_resume_latest_ends_as_the_uninterrupted_run(runs):
    assert json.loads((runs / "killed.json").read_text()) == ["checkpoint-2"], "killed between checkpoints"
    assert "resumed from " + str(runs / "cut" / "checkpoint-2") in rank_log(runs / "logs", 0)
    assert (runs / "cut-export" / "metrics.json").is_file()
    cut, full = states(runs / "cut" / "checkpoint-3"), states(runs / "two" / "lcd" / "run" / "checkpoint-3")
    assert cut.keys() == full.keys() and all(torch.equal(cut[k], full[k]) for k in cut)


def test_distributed_export_plan_leaves_the_runs_family_file_to_the_main_process(tmp_path):
    from rglcd.models import load_family
    from rglcd.training.export import export_plan

    shipped = load_family("emoji-64")
    _, registry = export_plan("auto", shipped, "lcm", runs=tmp_path, write=False)
    assert registry == tmp_path / "emoji-64" / "family.json" and not registry.exists()
    assert export_plan("auto", shipped, "lcm", runs=tmp_path)[1].is_file()


def test_distributed_accelerate_configs_load_as_written():
    """The shipped accelerate configs, read by accelerate itself. On this CPU machine none runs as written (GPUs;
    DeepSpeed is not installed; accelerate joins CPU processes as MULTI_CPU/DDP even under fsdp.yaml), so their
    fields are checked against what the trainers assume (docs/training.md, "Multi-process training")."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = ROOT / "train" / "configs" / "accelerate"
    assert sorted(p.name for p in folder.glob("*.yaml")) == ["8gpu-bf16.yaml", "deepspeed-zero2.yaml", "fsdp.yaml"]
    configs = {p.stem: load_config_from_file(str(p)) for p in folder.glob("*.yaml")}
    for config in configs.values():
        assert (config.num_processes, config.num_machines, config.mixed_precision, config.use_cpu) == (8, 1, "bf16",
                                                                                                       False)
    assert configs["8gpu-bf16"].distributed_type == DistributedType.MULTI_GPU
    fsdp = configs["fsdp"]
    assert fsdp.distributed_type == DistributedType.FSDP
    # use_orig_params: LoRA mixes frozen and trained parameters in one wrapped module
    assert fsdp.fsdp_config == {"fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_min_num_params": 1_000_000,
                                "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                                "fsdp_use_orig_params": True, "fsdp_offload_params": False,
                                "fsdp_sync_module_states": True}
    deepspeed = configs["deepspeed-zero2"]
    defaults = DistillConfig().optim
    assert deepspeed.distributed_type == DistributedType.DEEPSPEED
    assert deepspeed.deepspeed_config["zero_stage"] == 2
    # DeepSpeed's own clipping and accumulation replace the trainer's: they must say the same
    assert deepspeed.deepspeed_config["gradient_clipping"] == defaults.max_grad_norm
    assert deepspeed.deepspeed_config["gradient_accumulation_steps"] == defaults.gradient_accumulation_steps


@pytest.mark.parametrize("trainer", ["autoencoder", "reward", "fashion_classifier"])
def test_distributed_launch_of_a_one_process_trainer_is_one_line_exit_2(trainer, tmp_path, monkeypatch):
    """The embedded family's minutes-long stages train in one process; launched as 2 they stop before any work (one
    `error:` line each, exit 2) instead of racing on one export."""
    from tests.entry_points import run_entry_point

    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_entry_point(ROOT / "train" / f"{trainer}.py", ["--export-dir", str(tmp_path / "export")],
                                   cwd=tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        f"error: train/{trainer}.py trains in one process: run it with python, not as 2 processes (torchrun / "
        "accelerate launch)"]
    assert not any(tmp_path.iterdir())
