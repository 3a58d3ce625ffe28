"""The comparison engine behind app.py: one prompt through the teacher and its students, each with its images,
reward scores, time and UNet evaluations.

Browser-free parts: `parse_settings` (raw page/API values -> `Settings` or `InputError` with a message naming the
field), `Engine.run` (one column -> `ColumnResult`, never raises), `Engine.compare` (all columns, yielded as each
finishes), `Engine.reward_vs_steps` (rows for the students' plot), `compare_page` (the page's outputs, streamed).
`build_app` wraps them in a gradio page whose `/compare` and `/reward_vs_steps` endpoints gradio_client can call.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
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

from rglcd.models import ASSETS, Family, ModelLoadError, count_tokens, load_family
from rglcd.sampling import InputError, Request, generate

TEACHER = "teacher"
COLUMNS: tuple[str, ...] = (TEACHER, "lcm", "rg-lcm", "mlcm")
TITLES = {TEACHER: "Teacher (DDIM + CFG)", "lcm": "LCM", "rg-lcm": "RG-LCM", "mlcm": "MLCM", "lcm-lora": "LCM-LoRA"}
STUDENT_STEPS = (1, 8)
TEACHER_STEPS = (1, 100)
GUIDANCE = (1.0, 15.0)
NUM_IMAGES = (1, 4)
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 500
IMAGE_DIR = Path(tempfile.gettempdir()) / "rglcd-app"  # the PNGs the page shows, one file per distinct image
# Rewards shown beside the family's own one (a family file may list its own under "app_rewards"); any that cannot
# load (weights absent, not in the registry yet) is shown as unavailable.
EXTRA_REWARDS: dict[str, tuple[str, ...]] = {name: ("imagereward", "clipscore") for name in ("sd21", "sd21-base",
                                                                                             "sdxl")}
EXAMPLE_PROMPTS: dict[str, tuple[Path, ...]] = {
    "emoji-64": (ASSETS / "prompts" / "emoji-eval-train.txt", ASSETS / "prompts" / "emoji-eval-heldout.txt")}
GENERIC_EXAMPLES = ("a photo of a red apple on a wooden table", "an astronaut riding a horse, digital art",
                    "a watercolor painting of a lighthouse at dawn")


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


def _number(value: Any, name: str, bounds: tuple[float, float], whole: bool) -> float:
    """`value` (number or numeric text) as a float within `bounds`, else InputError naming `name` and the range."""
    lo, hi = (f"{b:.0f}" if whole else f"{b:g}" for b in bounds)
    what = "a whole number" if whole else "a number"
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be {what} between {lo} and {hi}, got {value!r}") from None
    if not math.isfinite(number) or (whole and number != int(number)):
        raise InputError(f"{name} must be {what} between {lo} and {hi}, got {value!r}")
    if not bounds[0] <= number <= bounds[1]:
        raise InputError(f"{name} must be between {lo} and {hi}, got {number:g}")
    return number


def parse_settings(prompt: Any, student_steps: Any = 4, teacher_steps: Any = 25, student_guidance: Any = 5.0,
                   teacher_guidance: Any = 5.0, seed: Any = 0, num_images: Any = 1) -> Settings:
    """Check raw values from the page or the API; raise InputError with a message a user can act on."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty: describe the image, e.g. 'red apple'")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is too long: {len(prompt)} characters, at most {MAX_PROMPT_CHARS}")
    return Settings(
        prompt=prompt,
        student_steps=int(_number(student_steps, "student steps", STUDENT_STEPS, whole=True)),
        teacher_steps=int(_number(teacher_steps, "teacher steps", TEACHER_STEPS, whole=True)),
        student_guidance=_number(student_guidance, "student guidance scale", GUIDANCE, whole=False),
        teacher_guidance=_number(teacher_guidance, "teacher guidance scale", GUIDANCE, whole=False),
        seed=int(_number(seed, "seed", (0, MAX_SEED), whole=True)),
        num_images=int(_number(num_images, "number of images", NUM_IMAGES, whole=True)),
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

    def caption(self) -> str:
        """Markdown shown under the column's images: rewards, time, UNet evaluations."""
        if self.status != "ok":
            return f"**{self.status}**: {self.message}"
        lines = [f"**{name}** {sum(v) / len(v):.2f}" + (f" ({', '.join(f'{s:.1f}' for s in v)})" if len(v) > 1
                                                         else "") for name, v in self.scores.items()]
        lines += [f"**{name}** unavailable" for name in self.unavailable_rewards]
        cfg = " x 2 (CFG)" if self.nfe > self.steps else ""
        lines.append(f"{self.seconds:.2f} s, {self.nfe:g} NFE ({self.steps} steps{cfg}), guidance "
                     f"{self.guidance_scale:g}")
        return "  \n".join(lines)

    def png_files(self, folder: Path = IMAGE_DIR) -> list[str]:
        """The images as PNG files named by their content, each written once and atomically. (Given PIL images,
        gradio re-encodes them to one cache path per content on every update, truncating a file that is being
        served; files it is given by path it copies once.)"""
        from PIL import Image

        if self.images is None:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for array in self.images.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy():
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="png")
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
        tokenizer = self.family().tokenizer
        with self._compute:
            n, limit = count_tokens(tokenizer, settings.prompt), tokenizer.model_max_length
        if n > limit:
            raise InputError(f"the prompt is too long: {n} tokens, the {self.family_name} text encoder reads at most "
                             f"{limit}")

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
        """Rows {model, steps, reward} of the family's first available reward (mean over the images) for every
        available student at each step count; unavailable students are left out."""
        rows = []
        for column in self.columns:
            if column == TEACHER:
                continue
            for n in steps:
                result = self.run(column, replace(settings, student_steps=n))
                if result.status != "ok" or not result.scores:
                    break
                name, values = next(iter(result.scores.items()))
                rows.append({"model": TITLES.get(column, column), "steps": n, "reward": sum(values) / len(values),
                             "reward_name": name})
        return rows

    def warm_up(self) -> None:
        """Load the family, its rewards and every available member now (the bench measures after this)."""
        self.rewards()
        for column in self.columns:
            try:
                self.kind(column)
                self._load_unet(column)
            except ModelLoadError:
                continue


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


def example_prompts(family: str, per_file: int = 4) -> list[str]:
    """A few example prompts for the family: from assets/prompts for emoji-64, generic ones otherwise."""
    files = EXAMPLE_PROMPTS.get(family, ())
    out = []
    for path in files:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        out += lines[:per_file]
    return out or list(GENERIC_EXAMPLES)


def user_message(err: Exception) -> str:
    """What the page says about a failure: the message itself for bad input or a family that cannot load, the type
    and message for anything unexpected."""
    return str(err) if isinstance(err, (InputError, ModelLoadError)) else f"unexpected {type(err).__name__}: {err}"


def page_outputs(columns: Sequence[str], results: dict[str, ColumnResult], files: dict[str, list[str]], status: str,
                 summary: dict[str, Any], pending: str = "") -> tuple:
    """The page's outputs in order: one list of PNG paths per column, one caption per column, the status line, the
    JSON."""
    captions = [results[c].caption() if c in results else pending for c in columns]
    return (*(files.get(c, []) for c in columns), *captions, status, summary)


def compare_page(engine: Engine, prompt: Any, student_steps: Any = 4, teacher_steps: Any = 25,
                 student_guidance: Any = 5.0, teacher_guidance: Any = 5.0, seed: Any = 0,
                 num_images: Any = 1) -> Iterator[tuple]:
    """The `/compare` handler: yields the page's outputs (see `page_outputs`) once before sampling and again after
    each column finishes. Bad input or a family that cannot load gives one message in the status and the JSON
    (`{"error": ...}`); nothing raises."""
    columns = engine.columns
    try:
        settings = parse_settings(prompt, student_steps, teacher_steps, student_guidance, teacher_guidance, seed,
                                  num_images)
        engine.check(settings)
    except Exception as err:  # noqa: BLE001 (never a traceback in the page)
        message = user_message(err)
        yield page_outputs(columns, {}, {}, f"**Cannot compare:** {message}", {"error": message})
        return
    results: dict[str, ColumnResult] = {}
    files: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    yield page_outputs(columns, results, files, "Running...", {}, pending="running...")
    for result in engine.compare(settings):
        results[result.column] = result
        files[result.column] = result.png_files()
        done = len(results) == len(columns)
        summary = {"family": engine.family_name, "settings": asdict(settings),
                   "results": {c: results[c].summary() for c in columns if c in results},
                   "total_seconds": round(time.perf_counter() - t0, 3)}
        status = (f"Done in {summary['total_seconds']:.2f} s." if done else f"{len(results)} of {len(columns)} "
                  "models done...")
        yield page_outputs(columns, results, files, status, summary, pending="running...")


def reward_plot_page(engine: Engine, prompt: Any, student_guidance: Any = 5.0, seed: Any = 0,
                     num_images: Any = 1) -> tuple[Any, str]:
    """The `/reward_vs_steps` handler: (a table of rows {model, steps, reward} for the plot, a status message)."""
    import pandas as pd

    empty = pd.DataFrame({"model": [], "steps": [], "reward": []})
    try:
        settings = parse_settings(prompt, student_guidance=student_guidance, seed=seed, num_images=num_images)
        engine.check(settings)
        rows = engine.reward_vs_steps(settings)
    except Exception as err:  # noqa: BLE001 (never a traceback in the page)
        return empty, f"**Cannot plot:** {user_message(err)}"
    if not rows:
        return empty, "No student is available to plot."
    return pd.DataFrame(rows), f"Reward ({rows[0]['reward_name']}) of each student at 1-{STUDENT_STEPS[1]} steps."


def stand_in_family(family: str, out_dir: Path, stand_ins: dict[str, str], override: bool = False) -> Path:
    """Write a copy of a local family file into `out_dir` with every path made absolute, where each column in
    `stand_ins` that the family lacks (every one of them with `override`) is a copy of another member's entry
    (e.g. {"rg-lcm": "lcm"}): four columns before every student is trained, for tests and benches. Returns the new
    family.json; stand-ins are marked with "stand_in_for" and "copied_from"."""
    source = load_family(family)
    if source.root is None:
        raise ModelLoadError(f"family '{family}' is not a local family file")
    spec = json.loads(json.dumps(source.spec))

    def absolute(entry: Any) -> Any:
        if isinstance(entry, str) and (source.root / entry).exists():
            return str((source.root / entry).resolve())
        if isinstance(entry, dict):
            return {k: absolute(v) if k in ("unet", "lora", "path") else v for k, v in entry.items()}
        return entry

    for key in ("vae", "text_encoder", "tokenizer", "scheduler"):
        spec[key] = absolute(spec[key])
    name, _, weights = str(spec.get("reward", "")).partition("=")
    if weights:
        spec["reward"] = f"{name}={absolute(weights)}"
    members = {k: absolute(v) for k, v in spec.get("members", {}).items()}
    for column, donor in stand_ins.items():
        if override or column not in members:
            members[column] = dict(members[donor], stand_in_for=column, copied_from=donor)
    spec["members"] = members
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


def capture_page(url: str, prompt: str, screenshot: Path, columns: Sequence[str] = COLUMNS,
                 chromium: Path = CHROMIUM, plot: bool = False, timeout_s: float = 120.0) -> dict[str, Any]:
    """Drive the page in a real browser (Python playwright on a system chromium, no browser download): type
    `prompt`, press Compare, wait until the run is done (with `plot`, also draw the reward-vs-steps plot), save a
    full-page PNG screenshot. The profile
    (`--user-data-dir`) is a fresh temporary folder. Returns what the page
    shows: {"images": column -> number of images, "captions": column -> caption text, "status": status text}."""
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
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#compare").click()
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')")
            page.wait_for_function("[...document.querySelectorAll('[id^=gallery-] img')].every(i => i.complete)")
            if plot:
                page.locator("#plot-button").click()
                page.wait_for_function("document.querySelector('#plot-status')?.innerText.includes('Reward')")
                page.locator("#reward-plot canvas, #reward-plot svg").first.wait_for()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return {"images": {c: page.locator(f"#gallery-{c} img").count() for c in columns},
                    "captions": {c: page.locator(f"#caption-{c}").inner_text() for c in columns},
                    "status": page.locator("#status").inner_text()}
        finally:
            browser.close()


def random_seed() -> str:
    """A fresh seed for the randomize button, as the seed box's text."""
    return str(random.randint(0, MAX_SEED))


def build_app(engine: Engine, concurrency: int = 2, max_queue: int = 64) -> Any:
    """The gradio page: controls, one column per model (images + rewards, time, NFE), the JSON, the students'
    reward-vs-steps plot. Queue: at most `concurrency` comparisons at a time, `max_queue` waiting."""
    import gradio as gr

    class CheckedSlider(gr.Slider):
        """A slider whose range `parse_settings` checks, so an out-of-range API value gets a message naming the
        field (gradio's own check only says "Value 9 is greater than maximum value 8")."""

        is_template = True

        def preprocess(self, payload: Any) -> Any:
            return payload

    name = engine.display_name()
    with gr.Blocks(title=f"rglcd: {name}") as app:
        gr.Markdown(f"# rglcd: teacher vs. few-step students ({name})\nOne prompt through the teacher "
                    "(DDIM + classifier-free guidance) and its consistency-distilled students (LCM, RG-LCM, MLCM). "
                    "Under each image: the family's rewards, sampling time and UNet evaluations per image (NFE).")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="red apple", max_lines=2, scale=4, elem_id="prompt")
            button = gr.Button("Compare", variant="primary", scale=1, elem_id="compare")
        with gr.Row():
            student_steps = CheckedSlider(*STUDENT_STEPS, value=4, step=1, label="Student steps (LCM, RG-LCM, MLCM)")
            student_guidance = CheckedSlider(
                *GUIDANCE, value=5.0, step=0.5, label="Student guidance scale (w + 1)",
                info="LCM pipeline convention: w is embedded in the UNet, no extra evaluations; 1 = no guidance")
            num_images = CheckedSlider(*NUM_IMAGES, value=1, step=1, label="Images per model")
            with gr.Column(min_width=160):
                seed = gr.Textbox(value="0", label="Seed (a whole number)", elem_id="seed")
                dice = gr.Button("Randomize seed", size="sm")
        with gr.Accordion("Advanced: teacher", open=False):
            with gr.Row():
                teacher_steps = CheckedSlider(*TEACHER_STEPS, value=25, step=1, label="Teacher DDIM steps",
                                              info="the students take the step slider above")
                teacher_guidance = CheckedSlider(
                    *GUIDANCE, value=5.0, step=0.5, label="Teacher guidance scale (CFG)",
                    info="classifier-free guidance: above 1, a conditional and an unconditional evaluation each "
                    "step (NFE = 2 x steps)")
        status = gr.Markdown(label="status", elem_id="status")
        galleries, captions = [], []
        with gr.Row(equal_height=True):
            for column in engine.columns:
                with gr.Column(min_width=180):
                    galleries.append(gr.Gallery(label=TITLES.get(column, column), columns=2, height=260,
                                                object_fit="contain", elem_id=f"gallery-{column}"))
                    captions.append(gr.Markdown(label=f"{column} scores", elem_id=f"caption-{column}"))
        with gr.Accordion("Scores and timings (JSON)", open=False):
            summary = gr.JSON(label="results")
        with gr.Row():
            plot_button = gr.Button("Plot reward vs steps for the students", size="sm", elem_id="plot-button")
            plot_status = gr.Markdown(label="plot status", elem_id="plot-status")
        plot = gr.LinePlot(x="steps", y="reward", color="model", x_title="steps", y_title="reward",
                           title="Reward against steps (mean over the images)", elem_id="reward-plot")
        gr.Examples(example_prompts(name), inputs=[prompt], label="Examples")

        def compare(prompt: str, student_steps: float, teacher_steps: float, student_guidance: float,
                    teacher_guidance: float, seed: str, num_images: float) -> Iterator[tuple]:
            yield from compare_page(engine, prompt, student_steps, teacher_steps, student_guidance,
                                    teacher_guidance, seed, num_images)

        def reward_vs_steps(prompt: str, student_guidance: float, seed: str, num_images: float) -> tuple[Any, str]:
            return reward_plot_page(engine, prompt, student_guidance, seed, num_images)

        inputs = [prompt, student_steps, teacher_steps, student_guidance, teacher_guidance, seed, num_images]
        outputs = [*galleries, *captions, status, summary]
        button.click(compare, inputs, outputs, api_name="compare")
        prompt.submit(compare, inputs, outputs, api_visibility="private")
        plot_button.click(reward_vs_steps, [prompt, student_guidance, seed, num_images], [plot, plot_status],
                          api_name="reward_vs_steps")
        dice.click(random_seed, None, seed, api_visibility="private")
    return app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
