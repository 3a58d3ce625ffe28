"""The comparison engine behind app.py: one prompt through the teacher and its students, each with its images,
reward scores, time and UNet evaluations.

Browser-free parts: `parse_settings` (raw page/API values -> `Settings` or `InputError` with a message naming the
field), `Engine.run` (one column -> `ColumnResult`, never raises), `Engine.compare` (all columns, yielded as each
finishes), `Engine.reward_vs_steps` (rows for the students' plot), `compare_page` (the page's outputs, streamed).
`build_app` wraps them in a gradio page whose `/compare` and `/reward_vs_steps` endpoints gradio_client can call.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rglcd.inputs import GUIDANCE, MAX_SEED, InputError, Request, check_prompt_tokens, number, prompt_text
from rglcd.models import ASSETS, Family, ModelLoadError, load_family, relocated_spec
from rglcd.sampling import generate

TEACHER = "teacher"
COLUMNS: tuple[str, ...] = (TEACHER, "lcm", "rg-lcm", "mlcm")
TITLES = {TEACHER: "Teacher (DDIM + CFG)", "lcm": "LCM", "rg-lcm": "RG-LCM", "mlcm": "MLCM", "lcm-lora": "LCM-LoRA"}
STUDENT_STEPS = (1, 8)  # the app's caps (a shared server); the CLI takes what the samplers accept (rglcd.inputs)
TEACHER_STEPS = (1, 100)
NUM_IMAGES = (1, 4)
DISPLAY_SIZE = 256  # smaller images are shown enlarged to at least this, nearest neighbour (crisp pixels)
PLOT_SAMPLES = 4  # images (noise draws from the seed) per point of the reward-vs-steps plot
# Rewards shown beside the family's own one (a family file may list its own under "app_rewards"); any that cannot
# load (weights absent, not in the registry yet) is shown as unavailable.
EXTRA_REWARDS: dict[str, tuple[str, ...]] = {name: ("imagereward", "clipscore") for name in ("sd21", "sd21-base",
                                                                                             "sdxl")}
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
_IMAGE_DIR: list[Path] = []
_IMAGE_DIR_LOCK = threading.Lock()


def image_dir() -> Path:
    """This process's private folder for the PNGs the page shows (mkdtemp: unpredictable name, mode 0700), made on
    first use and removed when the process exits."""
    with _IMAGE_DIR_LOCK:
        if not _IMAGE_DIR:
            _IMAGE_DIR.append(Path(tempfile.mkdtemp(prefix="rglcd-app-")))
            atexit.register(shutil.rmtree, _IMAGE_DIR[0], ignore_errors=True)
        return _IMAGE_DIR[0]


@dataclass(frozen=True)
class Settings:
    """One comparison: the students sample `student_steps` steps at LCM guidance `student_guidance` (pipeline scale
    w+1, embedded in the UNet), the teacher `teacher_steps` DDIM steps at classifier-free guidance `teacher_guidance`;
    `num_images` images per model from `seed`."""

    prompt: str
    student_steps: int = 4
    teacher_steps: int = 25
    student_guidance: float = 5.0
    teacher_guidance: float = 5.0
    seed: int = 0
    num_images: int = 1

    def request(self, kind: str) -> Request:
        """The sampling request for a member of this kind (teacher or any student kind)."""
        if kind == TEACHER:
            return Request(self.prompt, self.teacher_steps, self.teacher_guidance, self.seed, self.num_images)
        return Request(self.prompt, self.student_steps, self.student_guidance, self.seed, self.num_images)


def parse_settings(prompt: Any, student_steps: Any = 4, teacher_steps: Any = 25, student_guidance: Any = 5.0,
                   teacher_guidance: Any = 5.0, seed: Any = 0, num_images: Any = 1) -> Settings:
    """Check raw values from the page or the API (`rglcd.inputs`, with the app's tighter step and image caps);
    raise InputError with a message a user can act on."""
    return Settings(
        prompt=prompt_text(prompt),
        student_steps=number(student_steps, "student steps", STUDENT_STEPS, whole=True),
        teacher_steps=number(teacher_steps, "teacher steps", TEACHER_STEPS, whole=True),
        student_guidance=number(student_guidance, "student guidance scale", GUIDANCE, whole=False),
        teacher_guidance=number(teacher_guidance, "teacher guidance scale", GUIDANCE, whole=False),
        seed=number(seed, "seed", (0, MAX_SEED), whole=True),
        num_images=number(num_images, "number of images", NUM_IMAGES, whole=True),
    )


@contextmanager
def count_unet_evaluations(unet: nn.Module) -> Iterator[list[int]]:
    """Count UNet evaluations while the block runs: every forward call adds its batch size, so a classifier-free
    guidance step of one image (one call on a batch of 2) counts 2. Yields a one-item list holding the count."""
    count = [0]

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        count[0] += int((args[0] if args else kwargs["sample"]).shape[0])

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


@dataclass
class ColumnResult:
    """One column of the comparison. `status`: "ok", "unavailable" (member or its kind missing) or "error";
    `images` (N,3,H,W) in [0,1]; `seconds`: sampling wall time for all N images (text encoding, UNet steps, VAE
    decode); `nfe`: UNet evaluations per image; `scores`: reward name -> N scores."""

    column: str
    status: str
    message: str = ""
    kind: str = ""
    images: torch.Tensor | None = None
    steps: int = 0
    guidance_scale: float = 0.0
    nfe: float = 0.0
    seconds: float = 0.0
    reward_seconds: float = 0.0
    load_seconds: float = 0.0
    scores: dict[str, list[float]] = field(default_factory=dict)
    unavailable_rewards: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no images)."""
        out = {k: v for k, v in asdict(self).items() if k != "images"}
        out["mean_scores"] = {k: round(sum(v) / len(v), 3) for k, v in self.scores.items()}
        for key in ("seconds", "reward_seconds", "load_seconds"):
            out[key] = round(out[key], 3)
        return out

    def caption(self, best: bool = False) -> str:
        """Markdown shown under the column's images: rewards (with `best`, a marker first), time, UNet
        evaluations."""
        if self.status != "ok":
            return f"**{self.status}**: {self.message}"
        lines = ["**★ best**"] if best else []
        lines += [f"**{name}** {sum(v) / len(v):.2f}" + (f" ({', '.join(f'{s:.1f}' for s in v)})" if len(v) > 1
                                                         else "") for name, v in self.scores.items()]
        lines += [f"**{name}** unavailable" for name in self.unavailable_rewards]
        cfg = " x 2 (CFG)" if self.nfe > self.steps else ""
        lines.append(f"{self.seconds:.2f} s, {self.nfe:g} NFE ({self.steps} steps{cfg}), guidance "
                     f"{self.guidance_scale:g}")
        return "  \n".join(lines)

    def png_files(self, folder: Path | None = None) -> list[str]:
        """The images as PNG files in `folder` (default: `image_dir()`), enlarged by a whole factor to at least
        DISPLAY_SIZE with nearest-neighbour (crisp pixels), named by their content, each written once and
        atomically. (Given PIL images, gradio re-encodes them to one cache path per content on every update,
        truncating a file that is being served; files it is given by path it copies once.)"""
        from PIL import Image

        if self.images is None:
            return []
        folder = folder or image_dir()
        paths = []
        for array in self.images.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy():
            image = Image.fromarray(array)
            factor = max(1, -(-DISPLAY_SIZE // max(image.size)))
            image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
            buffer = io.BytesIO()
            image.save(buffer, format="png")
            path = folder / f"{hashlib.sha256(buffer.getvalue()).hexdigest()[:32]}.png"
            if not path.exists():
                staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
                staging.write_bytes(buffer.getvalue())
                os.replace(staging, path)
            paths.append(str(path))
        return paths


def reward_names(family: Family) -> list[str]:
    """Rewards shown under each image: the family's own first, then its `app_rewards` (or EXTRA_REWARDS)."""
    own = str(family.spec.get("reward", "")).partition("=")[0]
    extra = family.spec.get("app_rewards", EXTRA_REWARDS.get(family.name, ()))
    return list(dict.fromkeys([own, *extra] if own else extra))


class Engine:
    """Loads a family lazily, once, and keeps it loaded on `device` (default: CUDA when there is one); runs and
    scores its members for the app and the bench.

    Thread-safe: loading happens under one lock, sampling and scoring under another (the members share a tokenizer,
    which is not safe to call from two threads at once, and the UNet call counter counts one run), so concurrent
    requests interleave column by column.
    """

    def __init__(self, family: str, columns: Sequence[str] | None = None, rewards: Sequence[str] | None = None,
                 device: str | None = None, dtype: torch.dtype | None = None) -> None:
        self.family_name = family
        self.columns = tuple(columns or family_columns(family))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype  # the family's weights (e.g. torch.float16 on a GPU Space); rewards stay as they load
        self._reward_names = rewards
        self._lock = threading.RLock()
        self._compute = threading.Lock()
        self._family: Family | None = None
        self._rewards: dict[str, nn.Module | str] | None = None
        self.warm = False  # set once warm_up has loaded everything

    def family(self) -> Family:
        """The family with its shared components loaded (tokenizer, text encoder, VAE, scheduler).

        Raises ModelLoadError with a message starting "the model family ... cannot be loaded"; retried next call.
        """
        with self._lock:
            if self._family is None:
                try:
                    family = load_family(self.family_name, dtype=self.dtype)
                    _ = family.tokenizer, family.scheduler_config  # load now: a missing part fails here, once
                    for part in ("text_encoder", "text_encoder_2", "vae"):
                        if part in family.spec:
                            getattr(family, part).to(self.device)
                except ModelLoadError as err:
                    raise ModelLoadError(f"the model family '{self.family_name}' cannot be loaded: {err}") from err
                self._family = family
            return self._family

    def check(self, settings: Settings) -> None:
        """Raise InputError if the prompt is longer than the family's text encoder reads (loads the family)."""
        family = self.family()
        with self._compute:
            check_prompt_tokens(family, settings.prompt)

    def rewards(self) -> dict[str, nn.Module | str]:
        """Reward name -> loaded reward model, or the reason it is unavailable; loaded once."""
        with self._lock:
            if self._rewards is None:
                family = self.family()
                own = reward_names(family)[:1]
                self._rewards = {}
                for name in self._reward_names or reward_names(family):
                    try:
                        reward = family.reward() if [name] == own else _registry_reward(name)
                        self._rewards[name] = reward.to(self.device)
                    except Exception as err:  # noqa: BLE001 (absent weights, missing package: shown as unavailable)
                        self._rewards[name] = f"{type(err).__name__}: {err}"
            return self._rewards

    def display_name(self) -> str:
        """The family's own name from its spec (no weights load), or what it was asked by if it has none."""
        try:
            return load_family(self.family_name).name
        except ModelLoadError:
            return self.family_name

    def kind(self, column: str) -> str:
        """The member's kind ("teacher", "lcm", "mlcm", ...); ModelLoadError if the family has no such member."""
        return str(self.family().member(column).get("kind", column))

    def _load_unet(self, column: str) -> tuple[nn.Module, float]:
        with self._lock:
            t0 = time.perf_counter()
            unet = self.family().unet(column).to(self.device)
            return unet, time.perf_counter() - t0

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompt: str) -> tuple[dict[str, list[float]], dict[str, str], float]:
        """Every available reward of images in [0,1] (N,3,H,W) under `prompt`: (scores, unavailable, seconds)."""
        scores, unavailable = {}, {}
        t0 = time.perf_counter()
        for name, reward in self.rewards().items():
            if isinstance(reward, str):
                unavailable[name] = reward
            else:
                values = reward(images.to(self.device), [prompt] * len(images))
                scores[name] = [round(float(v), 3) for v in values]
        return scores, unavailable, time.perf_counter() - t0

    def run(self, column: str, settings: Settings) -> ColumnResult:
        """Sample and score one column. Never raises: a member missing from the family, or one whose kind or weights
        cannot load, is "unavailable"; a request the member cannot take or a failure while sampling is "error"."""
        try:
            kind = self.kind(column)
            unet, load_seconds = self._load_unet(column)
        except ModelLoadError as err:
            return ColumnResult(column, "unavailable", str(err))
        req = settings.request(kind)
        try:
            with self._compute:
                with count_unet_evaluations(unet) as calls:
                    t0 = time.perf_counter()
                    images = generate(self.family(), column, req)
                    seconds = time.perf_counter() - t0
                scores, unavailable, reward_seconds = self.score(images, settings.prompt)
        except ModelLoadError as err:
            return ColumnResult(column, "unavailable", str(err), kind)
        except InputError as err:
            return ColumnResult(column, "error", str(err), kind)
        except Exception as err:  # noqa: BLE001 (one column failing must not take the page or the server down)
            return ColumnResult(column, "error", f"{type(err).__name__}: {err}", kind)
        return ColumnResult(column, "ok", "", kind, images, req.steps, req.guidance_scale, calls[0] / len(images),
                            seconds, reward_seconds, load_seconds, scores, unavailable)

    def compare(self, settings: Settings) -> Iterator[ColumnResult]:
        """Run every column, yielding each result as it finishes: the students first (fast), the teacher last."""
        for column in sorted(self.columns, key=lambda c: c == TEACHER):
            yield self.run(column, settings)

    def reward_vs_steps(self, settings: Settings, steps: Sequence[int] = range(1, STUDENT_STEPS[1] + 1)
                        ) -> list[dict[str, Any]]:
        """Rows {model, steps, reward, se, n} of the family's first available reward (mean and standard error over
        `settings.num_images` images) for every available student at each step count, and one row for the teacher
        at its own settings; unavailable members are left out."""
        rows = []
        for column in sorted(self.columns, key=lambda c: c == TEACHER):
            for n in [settings.teacher_steps] if column == TEACHER else steps:
                result = self.run(column, replace(settings, student_steps=n))
                if result.status != "ok" or not result.scores:
                    break
                name, values = next(iter(result.scores.items()))
                mean = sum(values) / len(values)
                se = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1) / len(values)) ** 0.5
                rows.append({"model": TITLES.get(column, column), "steps": n, "reward": round(mean, 3),
                             "se": round(se, 3), "n": len(values), "reward_name": name})
        return rows

    def warm_up(self) -> None:
        """Load the family, its rewards and every available member now (the page does on first use, the bench
        before measuring). ModelLoadError when the family itself cannot load."""
        self.rewards()
        for column in self.columns:
            try:
                self.kind(column)
                self._load_unet(column)
            except ModelLoadError:
                continue
        self.warm = True


def family_columns(family: str) -> tuple[str, ...]:
    """The columns a family asks for (its spec's "columns", e.g. sdxl's teacher, lcm, lcm-lora, mlcm), else COLUMNS;
    reads the family description only, no weights."""
    try:
        return tuple(load_family(family).spec.get("columns", COLUMNS))
    except ModelLoadError:
        return COLUMNS


def _registry_reward(name: str) -> nn.Module:
    from rglcd.rewards import get_reward

    return get_reward(name)


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
    names = reward_names(family)
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
                 summary: dict[str, Any], pending: str = "") -> tuple:
    """The page's outputs in order: one list of PNG paths per column, one caption per column (the best column
    marked once every column is done), the status line, the JSON."""
    best = best_column(results) if len(results) == len(columns) else None
    captions = [results[c].caption(best=c == best) if c in results else pending for c in columns]
    return (*(files.get(c, []) for c in columns), *captions, status, summary)


def compare_page(engine: Engine, prompt: Any, student_steps: Any = 4, teacher_steps: Any = 25,
                 student_guidance: Any = 5.0, teacher_guidance: Any = 5.0, seed: Any = 0,
                 num_images: Any = 1) -> Iterator[tuple]:
    """The `/compare` handler: yields the page's outputs (see `page_outputs`) before sampling (on first use while
    the models load: "Loading models ...") and again after each column finishes. The total time counts the
    loading. Bad input or a family that cannot load gives one message in the status and the JSON
    (`{"error": ...}`); nothing raises."""
    columns = engine.columns
    t0 = time.perf_counter()
    load_seconds = 0.0
    try:
        settings = parse_settings(prompt, student_steps, teacher_steps, student_guidance, teacher_guidance, seed,
                                  num_images)
        if not engine.warm:
            yield page_outputs(columns, {}, {}, "Loading models (first use) ...", {}, pending="loading models ...")
            engine.warm_up()
            load_seconds = time.perf_counter() - t0
        engine.check(settings)
    except Exception as err:  # noqa: BLE001 (never a traceback in the page)
        message = user_message(err)
        yield page_outputs(columns, {}, {}, f"**Cannot compare:** {message}", {"error": message})
        return
    results: dict[str, ColumnResult] = {}
    files: dict[str, list[str]] = {}
    yield page_outputs(columns, results, files, "Running...", {}, pending="running...")
    for result in engine.compare(settings):
        results[result.column] = result
        files[result.column] = result.png_files()
        done = len(results) == len(columns)
        summary = {"family": engine.family_name, "settings": asdict(settings),
                   "results": {c: results[c].summary() for c in columns if c in results},
                   "total_seconds": round(time.perf_counter() - t0, 3), "load_seconds": round(load_seconds, 3)}
        loading = f" ({load_seconds:.2f} s of it loading the models, first use)" if load_seconds else ""
        status = (f"Done in {summary['total_seconds']:.2f} s{loading}." if done else
                  f"{len(results)} of {len(columns)} models done...")
        yield page_outputs(columns, results, files, status, summary, pending="running...")


def reward_figure(rows: list[dict[str, Any]]) -> Any:
    """A matplotlib figure of the rows of `Engine.reward_vs_steps`: each student's mean reward against its steps
    (whole-number ticks) with a +-1 standard error band, the teacher as a horizontal line with its band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    students = [r for r in rows if r["model"] != TITLES[TEACHER]]
    steps = sorted({r["steps"] for r in students}) or [1]
    for model in dict.fromkeys(r["model"] for r in students):
        pts = [r for r in students if r["model"] == model]
        x, y, se = [r["steps"] for r in pts], [r["reward"] for r in pts], [r["se"] for r in pts]
        line, = ax.plot(x, y, marker="o", label=model)
        ax.fill_between(x, [a - b for a, b in zip(y, se)], [a + b for a, b in zip(y, se)], alpha=0.2,
                        color=line.get_color())
    for r in rows:
        if r["model"] == TITLES[TEACHER]:
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
        engine.check(settings)
        rows = engine.reward_vs_steps(settings)
    except Exception as err:  # noqa: BLE001 (never a traceback in the page)
        return None, [], f"**Cannot plot:** {user_message(err)}"
    if not rows:
        return None, [], "No model is available to plot."
    return reward_figure(rows), rows, (f"Reward ({rows[0]['reward_name']}) at 1-{STUDENT_STEPS[1]} student steps, "
                                       f"mean of {PLOT_SAMPLES} images with a band of +-1 standard error; dashed: "
                                       "the teacher at its settings.")


def stand_in_family(family: str, out_dir: Path, stand_ins: dict[str, str], override: bool = False) -> Path:
    """Write a copy of a local family file into `out_dir` (its paths still naming the same folders), where each
    column in `stand_ins` that the family lacks (every one of them with `override`) is a copy of another member's
    entry (e.g. {"rg-lcm": "lcm"}): four columns before every student is trained, for tests and benches. Returns the
    new family.json; stand-ins are marked with "stand_in_for" and "copied_from"."""
    source = load_family(family)
    if source.root is None:
        raise ModelLoadError(f"family '{family}' is not a local family file")
    spec = relocated_spec(source, out_dir)
    members = spec["members"]
    for column, donor in stand_ins.items():
        if override or column not in members:
            members[column] = dict(members[donor], stand_in_for=column, copied_from=donor)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "family.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch_local(app: Any) -> str:
    """Start a built app on 127.0.0.1 at a free port without blocking; returns its URL (stop with `app.close()`)."""
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def capture_page(url: str, prompt: str | None, screenshot: Path, columns: Sequence[str] = COLUMNS,
                 chromium: Path = CHROMIUM, plot: bool = False, timeout_s: float = 120.0) -> dict[str, Any]:
    """Drive the page in a real browser (Python playwright on a system chromium, no browser download): type
    `prompt` (None: keep the page's default), press Compare, wait until the run is done (with `plot`, also draw the
    reward-vs-steps plot), save a full-page PNG screenshot. The profile (`--user-data-dir`) is a fresh temporary
    folder. Returns what the page shows: {"prompt": the prompt box's text, "images": column -> number of images,
    "image_sizes": column -> [natural width of each image], "captions": column -> caption text, "status",
    "legend": the legend's text, "plot_shown_before": whether a plot box was visible before drawing,
    "plot_images": images in the plot box after drawing}."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium), headless=True,
                                                        args=list(CHROMIUM_FLAGS),
                                                        viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            box = page.locator("#prompt textarea")
            if prompt is not None:
                box.fill(prompt)
            plot_box = page.locator("#reward-plot")
            shown_before = plot_box.count() > 0 and plot_box.first.is_visible()
            page.locator("#compare").click()
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')")
            page.wait_for_function("[...document.querySelectorAll('[id^=gallery-] img')].every(i => i.complete)")
            if plot:
                page.locator("#plot-button").click()
                page.wait_for_function("document.querySelector('#plot-status')?.innerText.includes('Reward')")
                page.locator("#reward-plot img").first.wait_for()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return {"prompt": box.input_value(),
                    "images": {c: page.locator(f"#gallery-{c} img").count() for c in columns},
                    "image_sizes": {c: page.locator(f"#gallery-{c} img").evaluate_all(
                        "images => images.map(i => i.naturalWidth)") for c in columns},
                    "captions": {c: page.locator(f"#caption-{c}").inner_text() for c in columns},
                    "status": page.locator("#status").inner_text(),
                    "legend": page.locator("#legend").inner_text(),
                    "plot_shown_before": shown_before,
                    "plot_images": page.locator("#reward-plot img").count()}
        finally:
            browser.close()


def random_seed() -> str:
    """A fresh seed for the randomize button, as the seed box's text."""
    return str(random.randint(0, MAX_SEED))


def build_app(engine: Engine, concurrency: int = 2, max_queue: int = 64) -> Any:
    """The gradio page: controls (students' and teacher's), a reward legend, one column per model (images + rewards,
    time, NFE; the best column marked), the JSON, the reward-vs-steps plot (shown once drawn), example prompts by
    group. Queue: at most `concurrency` comparisons at a time, `max_queue` waiting."""
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
        legend = reward_legend(load_family(engine.family_name))
    except ModelLoadError:
        legend = ""
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
        status = gr.Markdown(label="status", elem_id="status")
        gr.Markdown(legend, elem_id="legend")
        galleries, captions = [], []
        with gr.Row(equal_height=True):
            for column in engine.columns:
                with gr.Column(min_width=180):
                    galleries.append(gr.Gallery(label=TITLES.get(column, column), columns=2, height=280,
                                                object_fit="contain", elem_id=f"gallery-{column}"))
                    captions.append(gr.Markdown(label=f"{column} scores", elem_id=f"caption-{column}"))
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
                    teacher_guidance: float, seed: str, num_images: float) -> Iterator[tuple]:
            yield from compare_page(engine, prompt, student_steps, teacher_steps, student_guidance,
                                    teacher_guidance, seed, num_images)

        def reward_vs_steps(prompt: str, student_guidance: float, teacher_steps: float, teacher_guidance: float,
                            seed: str) -> tuple[Any, list[dict[str, Any]], str]:
            figure, rows, message = reward_plot_page(engine, prompt, student_guidance, teacher_steps,
                                                     teacher_guidance, seed)
            return gr.Plot(value=figure, visible=figure is not None), rows, message

        inputs = [prompt, student_steps, teacher_steps, student_guidance, teacher_guidance, seed, num_images]
        outputs = [*galleries, *captions, status, summary]
        button.click(compare, inputs, outputs, api_name="compare")
        prompt.submit(compare, inputs, outputs, api_visibility="private")
        plot_button.click(reward_vs_steps, [prompt, student_guidance, teacher_steps, teacher_guidance, seed],
                          [plot, plot_rows, plot_status], api_name="reward_vs_steps")
        dice.click(random_seed, None, seed, api_visibility="private")
    return app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
