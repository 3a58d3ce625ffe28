"""The evaluation harness: prompt following on known scores, image grids, end-to-end runs on tiny families that
write every output and resume without generating again, one-line errors, prompt-set loaders, and the GPU
benchmarks' code path on tiny shapes."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rglcd import evaluate
from rglcd.data.prompts import PromptSetError, load_prompt_set
from rglcd.evaluate import harness, prompt_following
from rglcd.images import image_grid
from rglcd.models import Family, load_family, register_member
from tests.entry_points import run_entry_point

BENCH = Path(__file__).resolve().parents[1] / "bench"


class TableReward(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def score_matrix(self, images, prompts):
        return self.table


def test_prompt_following_counts_pairwise_wins():
    # image 0 beats both other prompts, image 1 beats one of two, image 2 none.
    table = [[5.0, 1.0, 2.0], [3.0, 2.0, 1.0], [9.0, 9.0, 0.0]]
    res = prompt_following(TableReward(table), torch.zeros(3, 3, 4, 4), ["a", "b", "c"])
    assert abs(res["win_rate"] - (1.0 + 0.5 + 0.0) / 3) < 1e-6
    assert abs(res["top1"] - 1 / 3) < 1e-6
    assert abs(res["reward"] - (5 + 2 + 0) / 3) < 1e-6


def test_image_grid_layout():
    imgs = torch.zeros(5, 3, 4, 4)
    imgs[4] = 1
    grid = image_grid(imgs, nrow=4, pad=1)
    assert grid.shape == (2 * 5 + 1, 4 * 5 + 1, 3)
    assert (grid[6:10, 1:5] == 255).all() and (grid[1:5, 1:5] == 0).all()


OUTPUTS = ("results.csv", "results.md", "reward-vs-steps.png", "quality-vs-latency.png", "samples.png")


@pytest.fixture(scope="module")
def eval_inputs(tiny_emoji_family, tmp_path_factory):
    """A tiny emoji family with a teacher and an LCM student, 3 prompts in a file, a folder of 4 real images."""
    from rglcd.training.step import student_from_teacher
    from rglcd.training.teacher import TeacherConfig, build_unet

    tmp = tmp_path_factory.mktemp("eval")
    root = tmp / "family"
    shutil.copytree(tiny_emoji_family, root)
    torch.manual_seed(0)
    teacher = build_unet(TeacherConfig(block_out_channels=(32, 32), attention_head_dim=4), 16, 384)
    teacher.save_pretrained(root / "teacher")
    student_from_teacher(teacher, 256).save_pretrained(root / "lcm")
    register_member(root / "family.json", "lcm", root / "lcm", kind="lcm")
    (tmp / "prompts.txt").write_text("red apple\ncat\nrocket\n")
    (tmp / "real").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp / "real" / f"{i}.png")
    return root, tmp


def _args(root, tmp, out, *extra):
    return ["--family", str(root), "--models", "teacher,lcm,mlcm", "--skip-missing", "--steps", "1,2",
            "--teacher-steps", "2", "--prompts", f"file:{tmp / 'prompts.txt'}", "--seeds", "0,1", "--batch-size", "2",
            "--reference", str(tmp / "real"), "--bootstrap", "5", "--latency-repeats", "1", "--out", str(out), *extra]


def test_end_to_end_writes_every_output_and_resumes(eval_inputs, tmp_path, monkeypatch, capsys):
    root, tmp = eval_inputs
    out = tmp_path / "results"
    assert evaluate.main(_args(root, tmp, out)) == 0
    assert "no model 'mlcm'; skipped" in capsys.readouterr().err
    assert all((out / name).is_file() for name in OUTPUTS)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["model"], r["steps"]) for r in rows] == [("teacher", "2"), ("lcm", "1"), ("lcm", "2")]
    assert [float(r["nfe"]) for r in rows] == [4.0, 1.0, 2.0]  # CFG: cond + uncond per teacher step
    for r in rows:
        assert r["n_images"] == "6" and float(r["seconds_per_image"]) > 0
        assert 0 <= float(r["pf_win"]) <= 1 and float(r["fd"]) >= 0 and float(r["fd_ci95"]) >= 0
        assert -100 <= float(r["reward_emoji"]) <= 100 and 0 < float(r["hf_share"]) < 1
    assert rows[1]["baseline"] == "teacher 2" and rows[1]["pf_win_vs_base"] and rows[0]["baseline"] == ""
    assert float(rows[1]["hf_share_vs_base"]) == pytest.approx(float(rows[1]["hf_share"]) - float(rows[0]["hf_share"]),
                                                               abs=1e-6)
    table = (out / "results.md").read_text()
    assert "| lcm | 2 | 5 | 2 |" in table and "FD-EffNetLite0" in table and "4 images from" in table
    assert f"{100 * float(rows[0]['hf_share']):.2f} ± " in table and "high-frequency share (%)" in table

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun must not generate or score again")

    monkeypatch.setattr(Family, "pipeline", refuse)
    monkeypatch.setattr(harness, "efficientnet_lite0_features", refuse)
    monkeypatch.setattr(harness, "family_rewards", refuse)
    first = (out / "results.csv").read_text()
    assert evaluate.main(_args(root, tmp, out)) == 0
    assert (out / "results.csv").read_text() == first


def test_an_unknown_model_or_bad_steps_is_one_line_and_exit_2(eval_inputs, tmp_path, capsys):
    root, tmp = eval_inputs
    args = _args(root, tmp, tmp_path / "x")
    args[args.index("--skip-missing")] = "--dtype=fp32"
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: family tiny-emoji has no model 'mlcm'") and err.count("\n") == 1
    assert evaluate.main(_args(root, tmp, tmp_path / "x", "--steps", "51")) == 2
    assert "steps (lcm) must be a whole number between 1 and 50, got 51" in capsys.readouterr().err
    assert evaluate.main(_args(root, tmp, tmp_path / "x", "--prompts", "file:/no/such.txt")) == 2
    assert "prompt file not found" in capsys.readouterr().err


def test_the_baseline_is_checked_before_generating_and_model_alone_takes_its_most_steps(eval_inputs, tmp_path,
                                                                                       monkeypatch, capsys):
    root, tmp = eval_inputs

    def refuse(*args, **kwargs):
        raise AssertionError("a bad baseline must fail before any generation")

    monkeypatch.setattr(Family, "pipeline", refuse)
    assert evaluate.main(_args(root, tmp, tmp_path / "x", "--baseline", "lcm:4")) == 2
    assert "baseline lcm:4 is not among the evaluated runs (teacher:2, lcm:1, lcm:2)" in capsys.readouterr().err
    cfg = evaluate.EvalConfig(family=str(root), models=("teacher", "lcm"), steps=(1, 2), teacher_steps=(2,),
                              prompts="file:" + str(tmp / "prompts.txt"), baseline="lcm", out=str(tmp_path / "y"))
    base = evaluate.Evaluation(cfg).baseline
    assert (base.model, base.steps) == ("lcm", 2)


def test_any_family_runs_the_tiny_sd21_layout(tiny_sd21_repo, eval_inputs, tmp_path):
    _, tmp = eval_inputs
    part = {k: {"path": str(tiny_sd21_repo), "subfolder": k} for k in ("vae", "text_encoder", "tokenizer", "scheduler")}
    spec = {"name": "tiny-sd21", "resolution": 64, "max_length": 77, "reward": "emoji", **part,
            "members": {"teacher": {"unet": {"path": str(tiny_sd21_repo), "subfolder": "unet"}, "kind": "teacher"}}}
    (tmp_path / "family.json").write_text(json.dumps(spec))
    cfg = evaluate.EvalConfig(family=str(tmp_path / "family.json"), teacher_steps=(2,), prompts="file:"
                              + str(tmp / "prompts.txt"), seeds=(0,), batch_size=3, reference=str(tmp / "real"),
                              bootstrap=3, latency_repeats=1, out=str(tmp_path / "out"))
    rows = evaluate.run_evaluation(cfg)
    assert len(rows) == 1 and rows[0]["nfe"] == 4 and "fd" in rows[0]
    assert all((tmp_path / "out" / name).is_file() for name in OUTPUTS)


def test_paired_differences_by_hand():
    # two prompts, two seeds: run per-prompt means (2, 4), baseline (1, 1) -> differences (1, 3): mean 2, sd sqrt 2.
    run = [{"reward_r": torch.tensor([1.0, 3.0]), "pf_win": torch.tensor([0.5, 0.5])},
           {"reward_r": torch.tensor([3.0, 5.0]), "pf_win": torch.tensor([0.5, 0.5])}]
    base = [{"reward_r": torch.tensor([1.0, 1.0]), "pf_win": torch.tensor([0.0, 1.0])}] * 2
    out = evaluate.paired_differences(run, base, "teacher 50")
    assert out["baseline"] == "teacher 50" and out["reward_r_vs_base"] == pytest.approx(2.0)
    assert out["reward_r_vs_base_ci95"] == pytest.approx(1.959964 * 2 ** 0.5 / 2 ** 0.5, rel=1e-5)
    assert out["pf_win_vs_base"] == pytest.approx(0.0)


def test_prompt_following_groups_partition_the_prompts():
    groups = evaluate.prompt_groups(7, 3)
    assert sorted(torch.cat(groups).tolist()) == list(range(7)) and [len(g) for g in groups] == [3, 4]
    assert [g.tolist() for g in evaluate.prompt_groups(4, 0)] == [[0, 1, 2, 3]]


def test_benchmark_prompt_sets_from_local_files(tmp_path):
    bench = tmp_path / "hps"
    bench.mkdir()
    for style in ("anime", "concept-art", "paintings", "photo"):
        (bench / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3)]))
    assert load_prompt_set("hpsv2:photo", str(bench)).prompts == ["photo 0", "photo 1", "photo 2"]
    assert len(load_prompt_set("hpsv2", str(bench)).prompts) == 12
    assert load_prompt_set("hpsv2", str(bench), limit=4).prompts == ["anime 0", "concept-art 0", "paintings 0",
                                                                      "photo 0"]
    with pytest.raises(PromptSetError, match="unknown HPSv2 style"):
        load_prompt_set("hpsv2:cartoon", str(bench))
    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\tNote\na cat\tAnimals\tBasic\t\na car\tVehicles\tBasic\t\n")
    assert load_prompt_set("parti", str(parti)).prompts == ["a cat", "a car"]
    assert load_prompt_set("parti:Animals", str(tmp_path)).prompts == ["a cat"]
    coco = {"images": [{"id": 2}, {"id": 1}], "annotations": [
        {"image_id": 2, "id": 9, "caption": "b later"}, {"image_id": 2, "id": 5, "caption": "b first "},
        {"image_id": 1, "id": 7, "caption": "a"}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    assert load_prompt_set("coco", str(tmp_path)).prompts == ["a", "b first"]


def test_prompt_sets_fail_with_one_clear_line(tmp_path):
    with pytest.raises(PromptSetError, match="offline or not cached"):
        load_prompt_set("hpsv2:anime")  # the hub is offline in tests
    with pytest.raises(PromptSetError, match="needs a prompt source"):
        load_prompt_set("coco")
    with pytest.raises(PromptSetError, match="source not found"):
        load_prompt_set("parti", str(tmp_path / "missing.tsv"))
    with pytest.raises(PromptSetError, match="unknown prompt set"):
        load_prompt_set("drawbench")
    (tmp_path / "bad.tsv").write_text("Caption\nx\n")
    with pytest.raises(PromptSetError, match="no prompt column"):
        load_prompt_set(f"file:{tmp_path / 'bad.tsv'}")


def test_emoji_prompt_sets_and_their_paired_renders(monkeypatch):
    from rglcd.data import emoji

    held = load_prompt_set("heldout")
    assert len(held.prompts) == 217 and held.prompts == sorted(held.prompts) and "red apple" in held.prompts
    assert load_prompt_set("eval-heldout").prompts[:2] == ["red apple", "cat"]
    order = ["red heart", "red apple", "zebra"]
    monkeypatch.setattr(emoji, "renders", lambda concepts, size: torch.tensor(
        [order.index(c.name) for c in concepts]).view(-1, 1, 1, 1).expand(-1, 3, size, size).to(torch.uint8))
    refs = load_prompt_set("eval-heldout", limit=2).reference(2)
    assert refs[:, 0, 0, 0].tolist() == [1, 0]  # evenly spaced 2 of 16: red apple, red heart


@pytest.mark.parametrize("script, extra", [
    ("sampling_latency.py", ["--repeats", "1", "--student-steps", "1", "--teacher-steps", "2"]),
    ("train_throughput.py", ["--warmup", "1", "--steps", "1", "--batch-size", "2"]),
    ("train_vs_reference.py", ["--warmup", "1", "--steps", "1", "--batch-size", "2", "--variants", "lcd",
                               "--memory-steps", "1"]),
])
def test_full_size_benchmarks_run_on_tiny_shapes(script, extra, tmp_path):
    """The GPU benchmarks' code path (random SD2.1-layout models) on tiny shapes on the CPU."""
    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    try:
        code, _, err = run_entry_point(BENCH / script, ["--full-size", "tiny", "--threads", "1", "--out", str(out),
                                                        *extra])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err[-2000:]
    result = json.loads(out.read_text())
    assert result["what"] == "tiny" and result["command"].startswith("python ")
    if script == "sampling_latency.py":
        assert result["timings"]["teacher"]["2"]["nfe"] == 4 and result["timings"]["lcm"]["1"]["nfe"] == 1
        assert result["speedup"]["teacher 2 / lcm 1"] > 0
    elif script == "train_throughput.py":
        assert result["methods"]["lcd"]["steps_per_s"] > 0 and result["methods"]["lcd"]["peak_memory_mb"] > 0
    else:
        lcd = result["variants"]["lcd"]
        assert lcd["ratio_ours_over_reference"] > 0 and lcd["memory_ours_over_reference"] > 0
        assert len(lcd["ours"]["loss"]) == len(lcd["reference"]["loss"]) == 2


def test_seed_spread_pairs_training_seeds_and_calls_a_difference_shown_only_when_every_pair_agrees():
    from rglcd.evaluate import seeds
    from rglcd.sampling import InputError

    def per_seed(*values):  # two evaluation seeds, three prompts: the same per-prompt values
        return [{"reward_r": torch.tensor(values, dtype=torch.float32)}] * 2

    scores = {("teacher", 50): per_seed(5, 5, 5), ("a0", 4): per_seed(7, 8, 9), ("a1", 4): per_seed(4, 5, 6),
              ("b0", 4): per_seed(1, 2, 3), ("b1", 4): per_seed(1, 2, 3), ("a0", 2): per_seed(0, 0, 0)}
    kinds = {"teacher": "teacher", "a0": "lcm", "a1": "lcm", "b0": "lcm", "b1": "lcm"}
    groups = seeds.parse_groups(("t=teacher", "a=a0,a1", "b=b0,b1"), sorted(kinds))
    rows = seeds.compare(scores, kinds, groups, seeds.parse_pairs(("a:b", "a:t"), groups), (2, 4), "reward_r")
    # 2 steps is skipped for both (a1 and b have no 2-step run); per-prompt differences are constant: half-widths 0
    a_b, a_t4 = rows
    assert (a_b["a"], a_b["b"], a_b["a_steps"], [(p.a, p.b, p.diff) for p in a_b["pairs"]]) == (
        "a", "b", [4], [("a0", "b0", 6.0), ("a1", "b1", 3.0)])
    assert a_b["verdict"] == "above" and a_b["mean"] == 4.5 and (a_b["min"], a_b["max"]) == (3.0, 6.0)
    assert a_t4["b_steps"] == [50] and [(p.a, p.b, p.diff) for p in a_t4["pairs"]] == [("a0", "teacher", 3.0),
                                                                                       ("a1", "teacher", 0.0)]
    assert a_t4["verdict"] == "not shown"  # one seed above the teacher, the other level
    assert seeds.verdict([seeds.PairResult("x", "y", -2.0, 1.0), seeds.PairResult("x", "z", -1.0, 0.5)]) == "below"
    groups["t2"] = ("a0",)  # two teacher-like groups compare once, not once per student step count
    kinds2 = {**kinds, "a0": "teacher"}
    twice = seeds.compare(scores, kinds2, groups, [("t2", "t")], (2, 4), "reward_r")
    assert [(r["a_steps"], r["b_steps"]) for r in twice] == [([4], [50])]
    del groups["t2"]
    spread = {(g["group"], g["steps"]): g for g in seeds.group_rows(scores, groups, "reward_r")}
    assert spread[("a", 4)]["values"] == [8.0, 5.0] and spread[("a", 4)]["spread"] == 3.0 and ("a", 2) not in spread
    table = seeds.markdown(list(spread.values()), rows, "reward_r")
    assert "| a | b | 4 / 4 | a0 - b0: 6.0 ± 0.0; a1 - b1: 3.0 ± 0.0 | 4.5 | 3.0 to 6.0 | above |" in table
    for bad in (("a=",), ("a=a0", "a=a1"), ("a=zz",)):
        with pytest.raises(InputError):
            seeds.parse_groups(bad, sorted(kinds))
    with pytest.raises(InputError, match="--compare takes A:B"):
        seeds.parse_pairs(("a:c",), groups)
    with pytest.raises(InputError, match="cannot be paired"):
        seeds.member_pairs(("x", "y"), ("u", "v", "w"))


def test_seed_groups_end_to_end_and_bad_groups_fail_before_generating(eval_inputs, tmp_path, monkeypatch, capsys):
    root, tmp = eval_inputs
    out = tmp_path / "spread"
    assert evaluate.main(_args(root, tmp, out, "--seed-groups", "teacher=teacher", "lcm=lcm",
                               "--compare", "lcm:teacher")) == 0
    text = (out / "seed-spread.md").read_text()
    assert "--seed-groups teacher=teacher lcm=lcm" in text and "| lcm | 2 | lcm |" in text
    assert "| lcm | teacher | 1 / 2 | lcm - teacher: " in text and "| lcm | teacher | 2 / 2 |" in text

    def refuse(*args, **kwargs):
        raise AssertionError("bad seed groups must fail before any generation")

    monkeypatch.setattr(Family, "pipeline", refuse)
    assert evaluate.main(_args(root, tmp, tmp_path / "x", "--seed-groups", "lcm=lcm,nope")) == 2
    assert "--seed-groups lcm: nope not among the evaluated models" in capsys.readouterr().err


def test_score_text_name_scores_the_same_images_against_the_concept_names(eval_inputs, tmp_path, monkeypatch, capsys):
    root, tmp = eval_inputs
    out = tmp_path / "free"
    base = ["--family", str(root), "--models", "lcm", "--steps", "1", "--prompts", "heldout-val-free",
            "--max-prompts", "3", "--seeds", "0", "--batch-size", "3", "--bootstrap", "5", "--latency-repeats", "1",
            "--latency-batch", "2", "--out", str(out)]
    assert evaluate.main(base) == 0
    by_prompt = float(next(csv.DictReader(open(out / "results.csv")))["reward_emoji"])
    assert "Scored against" not in (out / "results.md").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("scoring against the names must reuse the generated images")

    monkeypatch.setattr(Family, "pipeline", refuse)
    assert evaluate.main(base + ["--score-text", "name"]) == 0
    by_name = float(next(csv.DictReader(open(out / "results.csv")))["reward_emoji"])
    text = (out / "results.md").read_text()
    assert "Scored against: each image's bare concept name" in text
    assert "emoji reward by phrasing" in text and "| model | `{} clipart` | `a small image of {}` | `an emoji" in text
    free = load_prompt_set("heldout-val-free", limit=3)
    images = torch.load(next(p for p in (out / "cache" / "lcm").glob("steps1-*seed0-*.pt")
                             if "scores" not in p.name and "latency" not in p.name), weights_only=False)["images"]
    reward = load_family(str(root)).reward()
    with torch.no_grad():
        x = images.float() / 255
        assert by_name == pytest.approx(reward(x, free.names).mean().item(), abs=1e-4)
        assert by_prompt == pytest.approx(reward(x, free.prompts).mean().item(), abs=1e-4)
    assert free.names == load_prompt_set("heldout-val", limit=3).prompts and by_name != by_prompt
    assert evaluate.main(base[:-1] + [str(tmp_path / "x"), "--prompts", f"file:{tmp / 'prompts.txt'}",
                                      "--score-text", "name"]) == 2
    assert "--score-text name needs a prompt set of named concepts" in capsys.readouterr().err


def test_phrasing_table_by_hand():
    from rglcd.evaluate.report import phrasing_table

    seeds = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([3.0, 2.0, 5.0, 0.0])]  # per-prompt means 2, 2, 4, 2
    table = phrasing_table({"lcm 4": seeds}, ["{} a", "{} b", "{} a", "{} b"])
    assert table.splitlines() == ["| model | `{} a` | `{} b` |", "|---|---|---|", "| lcm 4 | 3.0 | 2.0 |"]
    assert load_prompt_set("heldout-test-free").phrasings[:5] == ["a graphic of {}", "{} sticker", "show me {}",
                                                                 "a colourful {} sign", "a graphic of {}"]
    assert load_prompt_set("heldout-test").phrasings is None


def test_free_text_share_by_hand():
    from rglcd.evaluate.freetext import Share, group_verdict, share_of_names
    from rglcd.sampling import InputError

    # shares 18/24 = 0.75; f - 0.75 n = (-2, 0, 2), sd 2: half-width 1.96 * 2 / (sqrt(3) * 8)
    s = share_of_names(torch.tensor([4.0, 6.0, 8.0]), torch.tensor([8.0, 8.0, 8.0]))
    assert (s.names, s.free, s.share) == pytest.approx((8.0, 6.0, 0.75))
    assert s.ci95 == pytest.approx(1.959964 * 2 / (3 ** 0.5 * 8), rel=1e-5) and s.verdict() == "not shown"
    assert s.verdict(0.4) == "met" and s.verdict(1.1) == "short"  # interval 0.467 to 1.033
    # the same concepts' difficulty cancels: free always 90% of names, so the interval is zero-width
    tight = share_of_names(torch.tensor([9.0, 0.9, 4.5]), torch.tensor([10.0, 1.0, 5.0]))
    assert tight.share == pytest.approx(0.9, abs=1e-6) and tight.ci95 == pytest.approx(0.0, abs=1e-6)
    assert tight.verdict() == "met"
    assert group_verdict([tight, tight]) == "met" and group_verdict([tight, s]) == "not shown"
    assert group_verdict([Share(10, 5, 0.5, 0.1)] * 2) == "short"
    with pytest.raises(InputError, match="one shape"):
        share_of_names(torch.ones(3), torch.ones(4))
    undefined = share_of_names(torch.ones(3), -torch.ones(3))
    assert math.isnan(undefined.share) and undefined.verdict() == "n/a" and group_verdict([undefined]) == "n/a"


def test_paired_names_pairs_each_phrased_concept_with_its_bare_name(eval_inputs, tmp_path, monkeypatch, capsys):
    root, tmp = eval_inputs
    out = tmp_path / "free"
    base = ["--family", str(root), "--models", "teacher,lcm", "--teacher-steps", "2", "--steps", "1",
            "--max-prompts", "3", "--seeds", "0,1", "--batch-size", "3", "--bootstrap", "5", "--latency-repeats", "1",
            "--latency-batch", "2", "--out", str(out), "--seed-groups", "lcm=lcm"]
    assert evaluate.main(base + ["--prompts", "heldout-val"]) == 0
    names = {r["model"]: float(r["reward_emoji"]) for r in csv.DictReader(open(out / "results.csv"))}
    assert "real" in names
    made, real_pipeline = [], Family.pipeline
    monkeypatch.setattr(Family, "pipeline", lambda self, *a, **k: made.append(a) or real_pipeline(self, *a, **k))
    assert evaluate.main(base + ["--prompts", "heldout-val-free", "--paired-names"]) == 0
    free = {r["model"]: float(r["reward_emoji"]) for r in csv.DictReader(open(out / "results.csv"))}
    text = (out / "free-vs-names.md").read_text()
    for model, label in (("teacher", "teacher 2"), ("lcm", "lcm 1"), ("real", "real")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert float(cells[0]) == pytest.approx(names[model], abs=0.051)
        assert float(cells[1]) == pytest.approx(free[model], abs=0.051)
        # a share only of a positive names reward (this untrained tiny family's may be negative)
        share = f"{100 * free[model] / names[model]:.0f}%" if names[model] > 0 else "n/a"
        assert cells[2] == share and (cells[4] == "n/a") == (names[model] <= 0)
    assert "| lcm 1 | lcm 1 |" in text and "validation half" in text and "the share the reward itself keeps" in text
    # a second judge (`--rewards name@weights`, here the family's own reward folder) gets its own table and column
    judge = f"emoji@{root / 'reward'}"
    assert evaluate.main(base + ["--prompts", "heldout-val-free", "--paired-names", "--rewards", judge]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert all(float(r[f"reward_{judge}"]) == pytest.approx(float(r["reward_emoji"]), abs=1e-3) for r in rows)
    heading = "## Free text against bare names: `"
    _, own, second = (out / "free-vs-names.md").read_text().split(heading)
    assert own.startswith("reward_emoji`") and second.startswith(f"reward_{judge}`")
    assert heading + own.strip() == text[text.index(heading):].strip()
    assert own.split("\n", 1)[1].strip() == second.split("\n", 1)[1].strip()
    # the bare-names images came from the cache of the names evaluation: only the phrased prompts were generated
    assert len(made) == 2 * 2 + 2  # 2 runs x 2 seeds of phrased images + 2 latency timings, no names images
    assert evaluate.main(base + ["--prompts", "heldout-val", "--paired-names"]) == 2
    assert "--paired-names needs a phrased set of named concepts" in capsys.readouterr().err
