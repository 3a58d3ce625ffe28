"""The gradio page around the comparison engine: example prompts, the reward legend, the `/compare` and
`/reward_vs_steps` handlers (streamed outputs, never a traceback) and `build_app`, whose endpoints gradio_client
can call."""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, replace
from itertools import chain
from pathlib import Path
from typing import Any

from rglcd.demo.engine import (NUM_IMAGES, STUDENT_STEPS, TEACHER_STEPS, TITLES, ColumnResult, Engine,
                               parse_settings, shown_reward_names)
from rglcd.inputs import GUIDANCE, MAX_SEED, InputError
from rglcd.loading import ASSETS
from rglcd.models import Family, ModelLoadError, load_family

PLOT_SAMPLES = 4  # images (noise draws from the seed) per point of the reward-vs-steps plot
UNCHANGED = {"__type__": "update"}  # gradio's update that changes nothing (`gr.skip()`): the output is not sent again
TRAINED = "Trained concepts"
UNSEEN = "Unseen concepts (harder)"
# Example prompts by group, the first of the first group being the page's default. emoji-64: concepts the family was
# trained on first (tests check none is held out), then held-out ones, which no model of the family has seen. The
# default, banana, is one where all four columns draw the concept at seed 0 (emoji reward 40 / 50 / 55 / 36 for
# teacher / LCM / RG-LCM / MLCM at the page's defaults); single seeds vary a lot (green apple's LCM: -6 at seed 0,
# 39 at seed 1), which the reward-vs-steps plot averages over.
EXAMPLE_PROMPTS: dict[str, dict[str, tuple[str, ...] | Path]] = {"emoji-64": {
    TRAINED: ("banana", "green apple", "rocket", "pizza", "sun", "fire", "octopus", "snowman"),
    UNSEEN: ASSETS / "prompts" / "emoji-eval-heldout.txt"}}
GENERIC_EXAMPLES = ("a photo of a red apple on a wooden table", "an astronaut riding a horse, digital art",
                    "a watercolor painting of a lighthouse at dawn")
# One line per reward for the page's legend: what the number is; all are higher-is-better.
REWARD_NOTES = {"emoji": "100 x cosine similarity of image and prompt in the family's own scorer",
                "hpsv2.1": "Human Preference Score v2.1 (100 x CLIP cosine)",
                "imagereward": "ImageReward (standardised human preference; 0 is average)",
                "clipscore": "100 x CLIP cosine of image and prompt"}


def example_prompts(family: str) -> dict[str, list[str]]:
    """Example prompts by group (label -> prompts; a Path entry is read from its file): for emoji-64 trained
    concepts first, then unseen ones; generic prompts for other families."""
    groups = EXAMPLE_PROMPTS.get(family, {"Examples": GENERIC_EXAMPLES})
    out = {}
    for label, prompts in groups.items():
        if isinstance(prompts, Path):
            prompts = [ln.strip() for ln in prompts.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        out[label] = list(prompts)[:8]
    return out


def reward_legend(family: Family) -> str:
    """One line saying what the rewards under the images are and how the best column is marked."""
    names = shown_reward_names(family)
    notes = "; ".join(f"**{n}** = {REWARD_NOTES.get(n, 'reward model score')}" for n in names)
    first = names[0] if names else "reward"
    return f"Rewards, higher is better: {notes}. **★ best**: the column with the highest {first}."


def user_message(err: Exception) -> str:
    """What the page says about a failure: the message itself for bad input or a family that cannot load, the type
    and message for anything unexpected."""
    return str(err) if isinstance(err, (InputError, ModelLoadError)) else f"unexpected {type(err).__name__}: {err}"


def best_column(results: dict[str, ColumnResult]) -> str | None:
    """The column whose first reward's mean is highest among the finished ones (None if none has a score)."""
    scored = {c: sum(v) / len(v) for c, r in results.items() if r.status == "ok" and r.scores
              for v in [next(iter(r.scores.values()))]}
    return max(scored, key=scored.get) if scored else None


def page_outputs(columns: Sequence[str], results: dict[str, ColumnResult], files: dict[str, list[str]], status: str,
                 summary: dict[str, Any], pending: str = "", zoo: Sequence[str] = (), picked: Sequence[str] = (),
                 shown: Collection[str] = ()) -> tuple:
    """The page's outputs in order: one list of PNG paths per column (`UNCHANGED` for the `shown` columns, whose
    gallery already holds them), one caption per column (the best column marked once every column is done), the
    status line, the JSON; then, for a family with more models to pick (`zoo`), their PNG lists and captions (those
    not `picked` empty)."""
    running = [*columns, *picked]
    best = best_column(results) if len(results) == len(running) else None

    def caption(c: str) -> str:
        return results[c].caption(best=c == best) if c in results else pending if c in running else ""

    def gallery(c: str) -> Any:
        return UNCHANGED if c in shown else files.get(c, [])

    return (*(gallery(c) for c in columns), *(caption(c) for c in columns), status, summary,
            *(gallery(c) for c in zoo), *(caption(c) for c in zoo))


def zoo_members(family: Family, columns: Sequence[str]) -> list[str]:
    """The models a user may add beside the default `columns`: the family's members that give their own sampling
    settings or a licence (`rglcd.presets`' zoo of published models; emoji-64's TCD), in the family's order."""
    return [m for m in family.members if m not in columns and "train" not in family.member(m)
            and (family.defaults(m).given() or "licence" in family.member(m))]


def picked_members(value: Any, zoo: Sequence[str]) -> tuple[str, ...]:
    """The checked zoo members, in the zoo's order; InputError naming what is unknown."""
    picked = [] if value is None else value
    if not isinstance(picked, (list, tuple)) or not all(isinstance(m, str) for m in picked):
        raise InputError(f"published models must be a list of names from: {', '.join(zoo) or 'none'}")
    unknown = [m for m in picked if m not in zoo]
    if unknown:
        raise InputError(f"unknown published model {unknown[0]!r:.40}; this family offers: {', '.join(zoo) or 'none'}")
    return tuple(m for m in zoo if m in picked)


def compare_page(engine: Engine, prompt: Any, student_steps: Any = 4, teacher_steps: Any = 25,
                 student_guidance: Any = 5.0, teacher_guidance: Any = 5.0, seed: Any = 0,
                 num_images: Any = 1, own_settings: Any = True, published: Any = None, zoo: Sequence[str] = ()
                 ) -> Iterator[tuple]:
    """The `/compare` handler: yields the page's outputs (see `page_outputs`) before sampling (on first use while
    the models load: "Loading models ...") and again after each column finishes, with the galleries already shown
    left unchanged (not sent and fetched again) until the last update, which holds every column; the `published`
    models picked from `zoo` run after the default columns, each with its own settings unless `own_settings` is off.
    The total time counts the loading. Bad input or a family that cannot load gives one message in the status and
    the JSON
    (`{"error": ...}`); nothing raises."""
    columns = engine.columns
    t0 = time.perf_counter()
    load_seconds = 0.0
    picked: tuple[str, ...] = ()
    try:
        picked = picked_members(published, zoo)
        settings = parse_settings(prompt, student_steps, teacher_steps, student_guidance, teacher_guidance, seed,
                                  num_images, own_settings)
        if not engine.warm:
            yield page_outputs(columns, {}, {}, "Loading models (first use) ...", {}, pending="loading models ...",
                               zoo=zoo, picked=picked)
            engine.warm_up()
            load_seconds = time.perf_counter() - t0
        reading = engine.check(settings)
        settings = replace(settings, prompt=reading.text)  # the columns draw and score what the encoder reads
    except Exception as err:  # noqa: BLE001 (never a traceback in the page)
        message = user_message(err)
        yield page_outputs(columns, {}, {}, f"**Cannot compare:** {message}", {"error": message}, zoo=zoo)
        return
    running = [*columns, *picked]
    results: dict[str, ColumnResult] = {}
    files: dict[str, list[str]] = {}
    yield page_outputs(columns, results, files, "Running...", {}, pending="running...", zoo=zoo, picked=picked)
    for result in chain(engine.compare(settings), (engine.run(c, settings) for c in picked)):
        results[result.column] = result
        files[result.column] = result.png_files()
        done = len(results) == len(running)
        summary = {"family": engine.family_name, "settings": asdict(settings), "notices": list(reading.notices),
                   "results": {c: results[c].summary() for c in running if c in results},
                   "total_seconds": round(time.perf_counter() - t0, 3), "load_seconds": round(load_seconds, 3)}
        loading = f" ({load_seconds:.2f} s of it loading the models, first use)" if load_seconds else ""
        status = "".join(f"Note: {n}. " for n in reading.notices) + (
            f"Done in {summary['total_seconds']:.2f} s{loading}." if done else
            f"{len(results)} of {len(running)} models done...")
        yield page_outputs(columns, results, files, status, summary, pending="running...", zoo=zoo, picked=picked,
                           shown=() if done else set(results) - {result.column})


def reward_figure(rows: list[dict[str, Any]]) -> Any:
    """A matplotlib figure of the rows of `Engine.reward_vs_steps`: each student's mean reward against its steps
    (whole-number ticks) with a +-1 standard error band, the teacher as a horizontal line with its band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    students = [r for r in rows if not r["teacher"]]
    steps = sorted({r["steps"] for r in students}) or [1]
    for model in dict.fromkeys(r["model"] for r in students):
        pts = [r for r in students if r["model"] == model]
        x, y, se = [r["steps"] for r in pts], [r["reward"] for r in pts], [r["se"] for r in pts]
        line, = ax.plot(x, y, marker="o", label=model)
        ax.fill_between(x, [a - b for a, b in zip(y, se)], [a + b for a, b in zip(y, se)], alpha=0.2,
                        color=line.get_color())
    for r in rows:
        if r["teacher"]:
            ax.axhline(r["reward"], color="black", linestyle="--", label=f"Teacher ({r['steps']} steps)")
            ax.axhspan(r["reward"] - r["se"], r["reward"] + r["se"], color="black", alpha=0.08)
    ax.set_xticks(range(steps[0], steps[-1] + 1))
    ax.set_xlabel("student steps")
    name = rows[0]["reward_name"] if rows else "reward"
    ax.set_ylabel(f"{name} reward (mean of {rows[0]['n'] if rows else PLOT_SAMPLES})")
    ax.legend(fontsize="small", loc="best")
    ax.grid(alpha=0.3)
    return fig


def reward_plot_page(engine: Engine, prompt: Any, student_guidance: Any = 5.0, teacher_steps: Any = 25,
                     teacher_guidance: Any = 5.0, seed: Any = 0) -> tuple[Any, list[dict[str, Any]], str]:
    """The `/reward_vs_steps` handler: (the figure or None, rows {model, steps, reward, se, n, reward_name}, a
    status message). Each point is the mean over PLOT_SAMPLES images drawn from `seed`."""
    try:
        settings = parse_settings(prompt, student_guidance=student_guidance, teacher_steps=teacher_steps,
                                  teacher_guidance=teacher_guidance, seed=seed)
        settings = replace(settings, num_images=PLOT_SAMPLES)
        settings = replace(settings, prompt=engine.check(settings).text)
        rows = engine.reward_vs_steps(settings)
    except Exception as err:  # noqa: BLE001 (never a traceback in the page)
        return None, [], f"**Cannot plot:** {user_message(err)}"
    if not rows:
        return None, [], "No model is available to plot."
    return reward_figure(rows), rows, (f"Reward ({rows[0]['reward_name']}) at 1-{STUDENT_STEPS[1]} student steps, "
                                       f"mean of {PLOT_SAMPLES} images with a band of +-1 standard error; dashed: "
                                       "the teacher at its settings.")


def random_seed() -> str:
    """A fresh seed for the randomize button, as the seed box's text."""
    return str(random.randint(0, MAX_SEED))


def build_app(engine: Engine, concurrency: int = 8, max_queue: int = 64) -> Any:
    """The gradio page: controls (students' and teacher's), a reward legend, one column per model (images + rewards,
    time, NFE; the best column marked), the JSON, the reward-vs-steps plot (shown once drawn), example prompts by
    group. Queue: at most `concurrency` comparisons at a time (the engine samples them together, column by column:
    `Engine`'s micro-batching), `max_queue` waiting."""
    import gradio as gr

    class CheckedSlider(gr.Slider):
        """A slider whose range `parse_settings` checks, so an out-of-range API value gets a message naming the
        field (gradio's own check only says "Value 9 is greater than maximum value 8")."""

        is_template = True

        def preprocess(self, payload: Any) -> Any:
            return payload

    class CheckedTextbox(gr.Textbox):
        """A textbox whose API value reaches `parse_settings` as sent (gradio's own turns a list, number or bool
        into its text and runs it)."""

        is_template = True

        def preprocess(self, payload: Any) -> Any:
            return payload

    class CheckedBlocks(gr.Blocks):
        """Blocks that answer a call with the wrong number of values with one message (gradio's own check answers
        `{"error": null}` for too few, leaving the reason in the server log, and ignores extra values)."""

        def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
            if len(inputs) != len(block_fn.inputs):
                names = ", ".join(getattr(b, "label", None) or type(b).__name__ for b in block_fn.inputs)
                raise gr.Error(f"{block_fn.name} takes {len(block_fn.inputs)} values ({names}), got {len(inputs)}")

    name = engine.display_name()
    examples = example_prompts(name)
    try:
        described = load_family(engine.family_name)
        legend, zoo = reward_legend(described), zoo_members(described, engine.columns)
    except ModelLoadError:
        legend, zoo = "", []
    with CheckedBlocks(title=f"rglcd: {name}") as app:
        gr.Markdown(f"# rglcd: teacher vs. few-step students ({name})\nOne prompt through the teacher "
                    "(DDIM + classifier-free guidance) and its consistency-distilled students (LCM, RG-LCM, MLCM). "
                    "Under each image: the family's rewards, sampling time and UNet evaluations per image (NFE).")
        with gr.Row():
            prompt = CheckedTextbox(label="Prompt", value=next(iter(examples.values()))[0], max_lines=2, scale=4,
                                elem_id="prompt")
            button = gr.Button("Compare", variant="primary", scale=1, elem_id="compare")
        with gr.Row():
            student_steps = CheckedSlider(*STUDENT_STEPS, value=4, step=1, label="Student steps")
            student_guidance = CheckedSlider(
                *GUIDANCE, value=5.0, step=0.5, label="Student guidance scale (w + 1)",
                info="LCM convention: w is embedded in the UNet, no extra evaluations; 1 = no guidance")
            teacher_steps = CheckedSlider(*TEACHER_STEPS, value=25, step=1, label="Teacher DDIM steps",
                                          elem_id="teacher-steps")
            teacher_guidance = CheckedSlider(
                *GUIDANCE, value=5.0, step=0.5, label="Teacher guidance scale (CFG)", elem_id="teacher-guidance",
                info="above 1: a conditional and an unconditional evaluation each step (NFE = 2 x steps)")
        with gr.Row():
            num_images = CheckedSlider(*NUM_IMAGES, value=1, step=1, label="Images per model")
            with gr.Column(min_width=160):
                seed = CheckedTextbox(value="0", label="Seed (a whole number)", elem_id="seed")
                dice = gr.Button("Randomize seed", size="sm")
        if zoo:  # a family with more models to add beside the default columns (published ones, emoji-64's TCD)
            with gr.Row():
                published = gr.CheckboxGroup(zoo, value=[], label="More models to add",
                                             info="each sampled with its own scheduler, steps and guidance",
                                             elem_id="published")
                own_settings = gr.Checkbox(value=True, label="Added models use their own settings",
                                           info="off: the student sliders apply to them too", elem_id="own-settings")
        status = gr.Markdown(label="status", elem_id="status")
        gr.Markdown(legend, elem_id="legend")
        galleries, captions = [], []
        with gr.Row(equal_height=True):
            for column in engine.columns:
                with gr.Column(min_width=180):
                    galleries.append(gr.Gallery(label=TITLES.get(column, column), columns=2, height=280,
                                                object_fit="contain", elem_id=f"gallery-{column}"))
                    captions.append(gr.Markdown(label=f"{column} scores", elem_id=f"caption-{column}"))
        zoo_galleries, zoo_captions, zoo_boxes = [], [], []
        with gr.Row(equal_height=True):
            for column in zoo:
                with gr.Column(min_width=180, visible=False) as box:
                    zoo_galleries.append(gr.Gallery(label=column, columns=2, height=280, object_fit="contain",
                                                    elem_id=f"gallery-{column}"))
                    zoo_captions.append(gr.Markdown(label=f"{column} scores", elem_id=f"caption-{column}"))
                zoo_boxes.append(box)
        with gr.Accordion("Scores and timings (JSON)", open=False):
            summary = gr.JSON(label="results")
            plot_rows = gr.JSON(label="reward vs steps (the plot's rows)")
        with gr.Row():
            plot_button = gr.Button("Plot reward vs steps", size="sm", elem_id="plot-button")
            plot_status = gr.Markdown(label="plot status", elem_id="plot-status")
        plot = gr.Plot(label="Reward against steps", visible=False, elem_id="reward-plot")
        for label, prompts in examples.items():
            gr.Examples(prompts, inputs=[prompt], label=label)

        def compare(prompt: str, student_steps: float, teacher_steps: float, student_guidance: float,
                    teacher_guidance: float, seed: str, num_images: float, published: list[str] | None = None,
                    own_settings: bool = True) -> Iterator[tuple]:
            yield from compare_page(engine, prompt, student_steps, teacher_steps, student_guidance,
                                    teacher_guidance, seed, num_images, own_settings, published, zoo)

        def reward_vs_steps(prompt: str, student_guidance: float, teacher_steps: float, teacher_guidance: float,
                            seed: str) -> tuple[Any, list[dict[str, Any]], str]:
            figure, rows, message = reward_plot_page(engine, prompt, student_guidance, teacher_steps,
                                                     teacher_guidance, seed)
            return gr.Plot(value=figure, visible=figure is not None), rows, message

        inputs = [prompt, student_steps, teacher_steps, student_guidance, teacher_guidance, seed, num_images,
                  *([published, own_settings] if zoo else [])]
        outputs = [*galleries, *captions, status, summary, *zoo_galleries, *zoo_captions]
        if zoo:
            published.change(lambda picked: [gr.Column(visible=c in (picked or [])) for c in zoo], published,
                             zoo_boxes, api_visibility="private")
        button.click(compare, inputs, outputs, api_name="compare")
        prompt.submit(compare, inputs, outputs, api_visibility="private")
        plot_button.click(reward_vs_steps, [prompt, student_guidance, teacher_steps, teacher_guidance, seed],
                          [plot, plot_rows, plot_status], api_name="reward_vs_steps")
        dice.click(random_seed, None, seed, api_visibility="private")
    return app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
