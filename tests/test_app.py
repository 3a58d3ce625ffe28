"""The comparison app: the engine without a browser, and the app on 127.0.0.1 through gradio_client.

Uses the real emoji-64 weights with few steps. rg-lcm and mlcm are stand-ins (copies of the lcm entry) so four
columns produce images whatever the training state; the missing-member test uses a family without them.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from rglcd.demo import COLUMNS, Engine, build_app, compare_page, example_prompts, parse_settings  # noqa: E402
from rglcd.demo.batching import MicroBatcher  # noqa: E402
from rglcd.demo.page import UNCHANGED  # noqa: E402
from rglcd.samplers import sampler  # noqa: E402
from rglcd.sampling import InputError, generate  # noqa: E402
from rglcd.testing import launch_local, stand_in_family  # noqa: E402

torch.set_num_threads(1)
FAST = {"student_steps": 2, "teacher_steps": 3, "student_guidance": 5.0, "teacher_guidance": 5.0, "seed": "0",
        "num_images": 1}
LONG_PROMPT = " ".join(["red apple"] * 30)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def four_family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """emoji-64 with rg-lcm and mlcm standing in as copies of the lcm member."""
    return stand_in_family("emoji-64", tmp_path_factory.mktemp("four"), {"rg-lcm": "lcm", "mlcm": "lcm"},
                           override=True)


@pytest.fixture(scope="module")
def engine(four_family: Path) -> Engine:
    return Engine(str(four_family))


@pytest.fixture(scope="module")
def client(engine: Engine):
    from gradio_client import Client

    app = build_app(engine, concurrency=2)
    url = launch_local(app)
    yield Client(url, verbose=False)
    app.close()


def compare(client, prompt: str, **overrides) -> tuple:
    return client.predict(prompt, **{**FAST, **overrides}, api_name="/compare")


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": "x" * 501}, "the prompt is too long: 501 characters"),
    ({"prompt": ["red apple"]}, "the prompt must be text, got list"),
    ({"prompt": 7}, "the prompt must be text, got int"),
    ({"student_steps": 0}, "student steps must be a whole number between 1 and 8, got 0"),
    ({"student_steps": 9}, "student steps must be a whole number between 1 and 8, got 9"),
    ({"student_steps": 2.5}, "student steps must be a whole number"),
    ({"student_steps": True}, "student steps must be a whole number between 1 and 8, got True"),
    ({"student_steps": 10**400}, "student steps must be a whole number between 1 and 8, got a 401-digit number"),
    ({"teacher_steps": 0}, "teacher steps must be a whole number between 1 and 100"),
    ({"student_guidance": 21}, "student guidance scale must be a number between 1 and 20, got 21"),
    ({"teacher_guidance": 0.5}, "teacher guidance scale must be a number between 1 and 20, got 0.5"),
    ({"teacher_guidance": float("nan")}, "teacher guidance scale must be a number"),
    ({"teacher_guidance": "1e400"}, "teacher guidance scale must be a number between 1 and 20, got '1e400'"),
    ({"seed": "abc"}, "seed must be a whole number between 0 and 4294967295, got 'abc'"),
    ({"seed": "-1"}, "seed must be a whole number between 0 and 4294967295, got '-1'"),
    ({"seed": "9" * 400}, "seed must be a whole number between 0 and 4294967295, got '99999999999999999999..."),
    ({"num_images": 5}, "number of images must be a whole number between 1 and 4, got 5"),
])
def test_parse_settings_rejects_with_a_message(overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        parse_settings(**{"prompt": "red apple", **FAST, **overrides})


def test_parse_settings_accepts_numbers_as_text() -> None:
    s = parse_settings(" red apple ", "4", 25.0, "5.5", 5, " 12 ", 2.0)
    assert (s.prompt, s.student_steps, s.teacher_steps, s.student_guidance, s.seed, s.num_images) == (
        "red apple", 4, 25, 5.5, 12, 2)
    assert s.request(sampler("teacher")).steps == 25 and s.request(sampler("lcm")).steps == 4


def test_emoji_prompt_is_shown_as_the_names_the_encoder_reads(engine: Engine) -> None:
    reading = engine.check(parse_settings("🍕 on a plate"))
    assert reading.text == "pizza on a plate"
    assert reading.notices == ("emoji read as their names: '🍕 on a plate' -> 'pizza on a plate'",)
    assert engine.check(parse_settings("red apple")).notices == ()


def test_nfe_counts_each_cfg_half(engine: Engine) -> None:
    settings = parse_settings("pizza", student_steps=3, teacher_steps=4, num_images=2)
    teacher, student = engine.run("teacher", settings), engine.run("lcm", settings)
    no_cfg = engine.run("teacher", parse_settings("pizza", teacher_steps=4, teacher_guidance=1, num_images=2))
    assert (teacher.nfe, student.nfe, no_cfg.nfe) == (8, 3, 4)
    assert teacher.images.shape == (2, 3, 64, 64) and len(teacher.scores["emoji"]) == 2
    assert "8 NFE (4 steps x 2 (CFG))" in teacher.caption() and "3 NFE (3 steps)" in student.caption()


def test_batched_requests_draw_and_score_what_each_does_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    settings = [parse_settings(p, **{**FAST, "seed": s}) for p, s in (("banana", "0"), ("rocket", "1"),
                                                                      ("banana", "2"))]
    alone = [{r.column: r for r in engine.compare(s)} for s in settings]
    monkeypatch.setattr(engine.sampler, "gather_s", 60.0)  # each batch waits for the three sessions due
    before = len(engine.sampler.batch_sizes)
    with ExitStack() as stack, ThreadPoolExecutor(len(settings)) as pool:
        sessions = [stack.enter_context(engine.sampler.session(COLUMNS)) for _ in settings]
        batched = list(pool.map(lambda s, session: {c: engine.run(c, s, session=session) for c in COLUMNS},
                                settings, sessions))
    assert engine.sampler.batch_sizes[before:] == [3] * len(COLUMNS)
    for one, together in zip(alone, batched):
        for c in COLUMNS:
            assert together[c].status == "ok" and together[c].nfe == one[c].nfe
            assert (together[c].images - one[c].images).abs().max() < 1e-4, c
            assert together[c].scores["emoji"] == pytest.approx(one[c].scores["emoji"], abs=0.01), c
    assert (batched[0]["lcm"].images - batched[2]["lcm"].images).abs().max() > 0.1, "each request its own seed"


@pytest.mark.parametrize("conditioning", ["tokens", "sentence"])
def test_shared_text_encoding_draws_what_the_pipeline_draws(four_family: Path, tmp_path: Path,
                                                            conditioning: str) -> None:
    spec = json.loads(four_family.read_text())
    (tmp_path / "family.json").write_text(json.dumps({**spec, "text_conditioning": conditioning}))
    engine = Engine(str(tmp_path / "family.json"), columns=("teacher", "lcm"), rewards=("emoji",))
    settings = parse_settings("red apple", **{**FAST, "num_images": 2})
    for column in ("teacher", "lcm"):
        own = generate(engine.family(), column, settings.request(engine.family().sampler(column)))  # the pipeline encodes
        assert (engine.run(column, settings).images - own).abs().max() < 1e-4, column


def test_micro_batcher_groups_by_key_and_hands_back_each_result() -> None:
    import threading
    import time

    started, release = threading.Event(), threading.Event()

    def run_batch(key: str, items: list[int]) -> list[str]:
        if key == "gate":  # holds the turn until every other item waits
            started.set()
            release.wait(60)
        if key == "bad":
            raise RuntimeError("broken batch")
        return [f"{key}{i}" for i in items]

    batcher = MicroBatcher(run_batch, max_batch=2)
    jobs = [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("bad", 5)]
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        gate = pool.submit(batcher, "gate", 0)
        assert started.wait(60)
        futures = [pool.submit(batcher, key, item) for key, item in jobs]
        deadline = time.monotonic() + 60
        while batcher.waiting() < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        results = [f.exception() or f.result() for f in futures]
    assert gate.result() == "gate0" and results[:4] == ["a1", "b2", "a3", "a4"]
    assert str(results[4]) == "broken batch"
    assert sorted(batcher.batch_sizes) == [1, 1, 1, 1, 2], "a1 and a3 together (at most two a batch), a4 after"

    lanes = MicroBatcher(lambda key, items: items, gather_s=60.0, lane=lambda key: key)
    with lanes.session(["x"]) as session, ThreadPoolExecutor(1) as pool:
        call = pool.submit(lanes, "x", 7)
        time.sleep(0.3)
        assert not call.done(), "a batch waits for the session still due in its lane"
        lanes.leave(session, "x")
        assert call.result(timeout=30) == 7


def test_missing_member_kind_or_reward_is_unavailable(four_family: Path, tmp_path: Path) -> None:
    spec = json.loads(four_family.read_text())
    spec["members"] = {"teacher": spec["members"]["teacher"],
                       "mlcm": dict(spec["members"]["lcm"], kind="not-a-kind")}
    (tmp_path / "family.json").write_text(json.dumps(spec))
    engine = Engine(str(tmp_path / "family.json"), rewards=("emoji", "no-such-reward"))
    results = {r.column: r for r in engine.compare(parse_settings("cat", **FAST))}
    assert [results[c].status for c in COLUMNS] == ["ok", "unavailable", "unavailable", "unavailable"]
    assert "has no model 'rg-lcm'" in results["rg-lcm"].message and "not-a-kind" in results["mlcm"].message
    assert results["teacher"].scores["emoji"] and "no-such-reward" in results["teacher"].unavailable_rewards
    assert "**no-such-reward** unavailable" in results["teacher"].caption()
    assert results["lcm"].caption().startswith("**unavailable**")


@pytest.mark.parametrize("family, message", [
    ("sd21", "the model family 'sd21' cannot be loaded: could not load sd21 tokenizer from the Hugging Face hub"),
    ("/nowhere/family.json", "the model family '/nowhere/family.json' cannot be loaded: unknown model family"),
])
def test_family_that_cannot_load_gives_one_message(family: str, message: str) -> None:
    outputs = list(compare_page(Engine(family), "red apple", **FAST))
    assert [o[-2] for o in outputs[:-1]] == ["Loading models (first use) ..."]
    assert outputs[-1][-1]["error"].startswith(message) and message in outputs[-1][-2]


def test_compare_returns_four_results_with_scores(client) -> None:
    job = client.submit("red apple", **FAST, api_name="/compare")
    outputs = job.result()
    galleries, captions, status, summary = outputs[:4], outputs[4:8], outputs[8], outputs[9]
    assert status.startswith("Done")
    assert all(len(g) == 1 and Path(g[0]["image"]).is_file() for g in galleries)
    assert [summary["results"][c]["status"] for c in COLUMNS] == ["ok"] * 4
    assert all(summary["results"][c]["scores"]["emoji"] for c in COLUMNS)
    assert [summary["results"][c]["nfe"] for c in COLUMNS] == [6, 2, 2, 2]
    assert all("emoji" in c and "NFE" in c for c in captions)
    partial = [len(o[9].get("results", {})) for o in job.outputs()]
    assert partial[-1] == 4 and 1 in partial, f"results did not stream in: {partial}"


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": LONG_PROMPT}, "the prompt is too long: 62 tokens, the"),
    ({"student_steps": 9}, "student steps must be a whole number between 1 and 8, got 9"),
    ({"teacher_steps": 0}, "teacher steps must be a whole number between 1 and 100"),
    ({"student_guidance": 30}, "student guidance scale must be a number between 1 and 20, got 30"),
    ({"teacher_guidance": -1}, "teacher guidance scale must be a number between 1 and 20"),
    ({"seed": "seven"}, "seed must be a whole number"),
    ({"prompt": ["red apple"]}, "the prompt must be text, got list"),
    ({"prompt": {"text": "cat"}}, "the prompt must be text, got dict"),
    ({"prompt": 7}, "the prompt must be text, got int"),
    ({"prompt": True}, "the prompt must be text, got bool"),
    ({"student_steps": True}, "student steps must be a whole number between 1 and 8, got True"),
    ({"student_steps": 10**400}, "student steps must be a whole number between 1 and 8, got a 401-digit number"),
    ({"seed": "9" * 400}, "seed must be a whole number between 0 and 4294967295, got '99999999999999999999..."),
    ({"seed": 2**64}, "seed must be a whole number between 0 and 4294967295, got 18446744073709551616"),
])
def test_bad_input_returns_its_message(client, overrides: dict, message: str) -> None:
    prompt = overrides.pop("prompt", "red apple")
    outputs = compare(client, prompt, **overrides)
    assert outputs[9] == {"error": message + outputs[9]["error"][len(message):]} and message in outputs[8]
    assert len(outputs[9]["error"]) < 120 and "\n" not in outputs[9]["error"]
    assert all(g == [] for g in outputs[:4])
    assert compare(client, "rocket", seed=1)[8].startswith("Done"), "the server still answers"


@pytest.mark.parametrize("values", [["rocket", 2], ["rocket", 2, 3, 5, 5, "0", 1, "extra"], []])
def test_wrong_number_of_values_over_raw_http_gets_one_message(client, values: list) -> None:
    import urllib.request

    call = urllib.request.Request(client.src.rstrip("/") + "/gradio_api/call/compare", headers={
        "Content-Type": "application/json"}, data=json.dumps({"data": values}).encode())
    event = json.loads(urllib.request.urlopen(call, timeout=60).read())["event_id"]
    stream = urllib.request.urlopen(f"{client.src.rstrip('/')}/gradio_api/call/compare/{event}", timeout=60).read()
    lines = stream.decode().splitlines()
    assert lines[0] == "event: error"
    assert json.loads(lines[1].removeprefix("data: "))["error"] == (
        f"compare takes 9 values (Prompt, Student steps, Teacher DDIM steps, Student guidance scale (w + 1), Teacher "
        f"guidance scale (CFG), Seed (a whole number), Images per model, More models to add, Added models use their "
        f"own settings), got {len(values)}")
    assert compare(client, "pizza")[8].startswith("Done"), "the server still answers"


def test_family_that_cannot_load_through_the_api() -> None:
    from gradio_client import Client

    app = build_app(Engine("sd21"))
    try:
        outputs = compare(Client(launch_local(app), verbose=False), "red apple")
    finally:
        app.close()
    assert "the model family 'sd21' cannot be loaded" in outputs[9]["error"]


def test_eight_concurrent_clients(client) -> None:
    from gradio_client import Client

    def one(seed: int) -> dict:
        return compare(Client(client.src, verbose=False), "banana", seed=str(seed))[9]

    with ThreadPoolExecutor(8) as pool:
        summaries = list(pool.map(one, range(8)))
    assert all([s["results"][c]["status"] for c in COLUMNS] == ["ok"] * 4 for s in summaries)
    assert len({s["results"]["lcm"]["scores"]["emoji"][0] for s in summaries}) > 1


def test_reward_vs_steps_for_the_students(client) -> None:
    plot, rows, status = client.predict("pizza", 5.0, 3, 5.0, "0", api_name="/reward_vs_steps")
    assert plot["visible"] and plot["value"]["type"] == "matplotlib"
    assert sorted({r["model"] for r in rows}) == ["LCM", "MLCM", "RG-LCM", "Teacher (DDIM + CFG)"]
    assert [r["steps"] for r in rows if r["model"] == "LCM"] == list(range(1, 9))
    assert [r["steps"] for r in rows if r["model"].startswith("Teacher")] == [3]
    assert all(r["n"] == 4 and r["se"] >= 0 for r in rows)
    assert "Reward (emoji)" in status and "mean of 4 images" in status
    plot, rows, bad = client.predict("", 5.0, 3, 5.0, "0", api_name="/reward_vs_steps")
    assert "the prompt is empty" in bad and rows == [] and not plot["visible"]


def test_examples_show_trained_concepts_first_and_label_unseen_ones() -> None:
    from rglcd.data.emoji import heldout_names, read_prompts

    groups = example_prompts("emoji-64")
    assert list(groups) == ["Trained concepts", "Unseen concepts (harder)"]
    assert groups["Trained concepts"][:4] == ["banana", "green apple", "rocket", "pizza"]
    trained = set(read_prompts(ROOT / "assets/prompts/emoji-eval-train.txt"))
    assert set(groups["Trained concepts"]) <= trained and not set(groups["Trained concepts"]) & heldout_names()
    assert set(groups["Unseen concepts (harder)"]) <= heldout_names()


def test_best_column_is_marked_once_all_are_done(engine: Engine) -> None:
    outputs = list(compare_page(engine, "rocket", **FAST))
    final = outputs[-1]
    marked = [c for c, caption in zip(COLUMNS, final[4:8]) if caption.startswith("**★ best**")]
    means = {c: final[9]["results"][c]["mean_scores"]["emoji"] for c in COLUMNS}
    assert marked == [max(means, key=means.get)]
    assert not any("★" in caption for o in outputs[:-1] for caption in o[4:8])


def test_streamed_updates_send_each_gallery_once_then_all_at_the_end(engine: Engine) -> None:
    outputs = list(compare_page(engine, "rocket", **FAST))
    columns = [o for o in outputs if o[9].get("results")]  # the updates after each column
    assert all(list(o[:4]) == [[]] * 4 for o in outputs if o not in columns), "earlier updates clear the galleries"
    sent = [[g not in (UNCHANGED, []) for g in o[:4]] for o in columns]
    assert [sum(s) for s in sent] == [1, 1, 1, 4], "one new gallery per update, every gallery in the last"
    assert all(len(g) == 1 for g in outputs[-1][:4])


def test_images_are_shown_crisp_and_enlarged(engine: Engine, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    result = engine.run("lcm", parse_settings("rocket", **FAST))
    shown = np.array(Image.open(result.png_files(tmp_path)[0]))
    assert shown.shape == (256, 256, 3)
    original = result.images[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert (shown[::4, ::4] == original).all() and (shown[3::4, 3::4] == original).all(), "4x4 blocks of each pixel"


def test_image_folder_is_private_to_the_process_and_removed_at_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from rglcd.demo import image_dir; import os, stat; d = image_dir(); "
            "print(d, oct(stat.S_IMODE(os.stat(d).st_mode)), image_dir() == d)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert Path(out[0]).name.startswith("rglcd-app-") and out[1:] == ["0o700", "True"]
    assert not Path(out[0]).exists(), "removed when the process exits"


def test_every_member_of_the_embedded_family_runs() -> None:
    engine = Engine("emoji-64")
    members = set(engine.family().members)
    results = {r.column: r for r in engine.compare(parse_settings("pizza", **FAST))}
    assert all(results[c].status == ("ok" if c in members else "unavailable") for c in COLUMNS), {
        c: results[c].message for c in COLUMNS}
