"""The comparison engine behind app.py: one prompt through the teacher and its students, each with its images,
reward scores, time and UNet evaluations.

`parse_settings` (raw page/API values -> `Settings` or `InputError` with a message naming the field), `Engine.run`
(one column -> `ColumnResult`, never raises), `Engine.compare` (all columns, yielded as each finishes),
`Engine.reward_vs_steps` (rows for the students' plot). The gradio page around it is `rglcd.demo.page`.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from rglcd.demo.batching import MicroBatcher
from rglcd.evaluate.generate import count_unet_evals
from rglcd.files import write_atomic
from rglcd.inputs import (GUIDANCE, MAX_SEED, InputError, Request, check_prompt_tokens, check_request, number,
                          prompt_text, sampling_notes)
from rglcd.methods import demo_members, member_titles
from rglcd.models import Family, ModelLoadError, encode_prompts, load_family
from rglcd.rewards import get_reward
from rglcd.samplers import MemberDefaults, Sampler
from rglcd.sampling import PromptReading, generate_batch, read_prompt, sampling_extras, unconditional_embeds

TEACHER = "teacher"  # the teacher's member name in every family
COLUMNS: tuple[str, ...] = (TEACHER, *demo_members())  # the teacher, then each registered method's student
TITLES = {TEACHER: "Teacher (DDIM + CFG)", **member_titles()}
STUDENT_STEPS = (1, 8)  # the app's caps (a shared server); the CLI takes what the samplers accept (rglcd.inputs)
TEACHER_STEPS = (1, 100)
NUM_IMAGES = (1, 4)
DISPLAY_SIZE = 256  # smaller images are shown enlarged to at least this, nearest neighbour (crisp pixels)
# Rewards shown beside the family's own one (a family file may list its own under "app_rewards"); any that cannot
# load (weights absent, not in the registry yet) is shown as unavailable.
EXTRA_REWARDS: dict[str, tuple[str, ...]] = {name: ("imagereward", "clipscore") for name in ("sd21", "sd21-base",
                                                                                             "sdxl")}
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


def serve_from_private_folder() -> Path:
    """Before the app is built (main thread): gradio keeps its copies of the page's files in this process's image
    folder too (GRADIO_TEMP_DIR, unless already set), and SIGTERM stops the app as Ctrl-C does (gradio closes its
    server, the process exits with 0 and removes the folder). Returns the folder."""
    folder = image_dir()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(folder / "gradio"))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    return folder


@dataclass(frozen=True)
class Settings:
    """One comparison: the students sample `student_steps` steps at LCM guidance `student_guidance` (pipeline scale
    w+1, embedded in the UNet), the teacher `teacher_steps` DDIM steps at classifier-free guidance `teacher_guidance`;
    `num_images` images per model from `seed`. With `own_settings`, a member that gives its own steps or guidance
    (a published model's, `rglcd.samplers.MemberDefaults`) samples with them instead."""

    prompt: str
    student_steps: int = 4
    teacher_steps: int = 25
    student_guidance: float = 5.0
    teacher_guidance: float = 5.0
    seed: int = 0
    num_images: int = 1
    own_settings: bool = True

    def request(self, spec: Sampler, own: MemberDefaults = MemberDefaults()) -> Request:
        """The sampling request for a member of kind `spec` with its own settings `own`: the teacher's settings for
        a teacher, the students' for the others; a fixed-timestep member's steps are its timesteps' number."""
        steps, guidance = ((self.teacher_steps, self.teacher_guidance) if spec.teacher
                           else (self.student_steps, self.student_guidance))
        if self.own_settings:
            steps, guidance = own.steps or steps, own.guidance or guidance
        steps = len(own.timesteps) if own.timesteps is not None else steps
        return Request(self.prompt, steps, guidance, self.seed, self.num_images)


def parse_settings(prompt: Any, student_steps: Any = 4, teacher_steps: Any = 25, student_guidance: Any = 5.0,
                   teacher_guidance: Any = 5.0, seed: Any = 0, num_images: Any = 1, own_settings: Any = True
                   ) -> Settings:
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
        own_settings=switch(own_settings, "own settings"),
    )


def switch(value: Any, name: str) -> bool:
    """A checkbox's value: a bool, else InputError naming `name`."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r:.24}")
    return value


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
    notes: tuple[str, ...] = ()  # settings that do not apply as given (rglcd.inputs.sampling_notes), the licence

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
        lines += [f"_{note}_" for note in self.notes]
        return "  \n".join(lines)

    def png_files(self, folder: Path | None = None) -> list[str]:
        """The images as PNG files in `folder` (default: `image_dir()`), enlarged by a whole factor to at least
        DISPLAY_SIZE with nearest-neighbour (crisp pixels), named by their content, each written once and
        atomically. (Given PIL images, gradio re-encodes them to one cache path per content on every update,
        truncating a file that is being served; files it is given by path it copies once.)"""
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
                write_atomic(path, buffer.getvalue())
            paths.append(str(path))
        return paths


def shown_reward_names(family: Family) -> list[str]:
    """Rewards shown under each image: the family's own first, then its `app_rewards` (or EXTRA_REWARDS)."""
    own = str(family.spec.get("reward", "")).partition("=")[0]
    extra = family.spec.get("app_rewards", EXTRA_REWARDS.get(family.name, ()))
    return list(dict.fromkeys([own, *extra] if own else extra))


class Engine:
    """Loads a family lazily, once, and keeps it loaded on `device` (default: CUDA when there is one); runs and
    scores its members for the app and the bench.

    Thread-safe: loading happens under one lock, tokenizers (not safe to call from two threads at once) and rewards
    are used under another, and each column samples one batch at a time (its pipeline's scheduler and UNet call
    counter count one run), while different columns run side by side (a comparison's teacher beside its students).
    Concurrent requests for the same column at the same settings are sampled and scored as one batch of up to
    `max_batch` (`rglcd.demo.batching`: at each column a comparison waits, up to `gather_s`, for the comparisons still
    due there), with the same images and scores as alone (within float noise).
    """

    def __init__(self, family: str, columns: Sequence[str] | None = None, rewards: Sequence[str] | None = None,
                 device: str | None = None, dtype: torch.dtype | None = None, max_batch: int = 8,
                 gather_s: float = 0.5) -> None:
        self.family_name = family
        self.columns = tuple(columns or family_columns(family))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype  # the family's weights (e.g. torch.float16 on a GPU Space); rewards stay as they load
        self._reward_names = rewards
        self._lock = threading.RLock()
        self._compute = threading.Lock()
        self._family: Family | None = None
        self._rewards: dict[str, nn.Module | str] | None = None
        self._pipes: dict[str, Any] = {}
        self._empty_states: dict[str, torch.Tensor | None] = {}  # column -> its pipeline's states of ""
        self.sampler: MicroBatcher[tuple[Request, torch.Tensor | None], ColumnResult] = MicroBatcher(
            self._sample_batch, max_batch=max_batch, gather_s=gather_s, lane=lambda key: key[0])
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

    def check(self, settings: Settings) -> PromptReading:
        """Raise InputError if the prompt is longer than the family's text encoder reads (loads the family); else
        how the text encoder reads it (`rglcd.sampling.read_prompt`: emoji as names, notices)."""
        family = self.family()
        with self._compute:
            check_prompt_tokens(family, settings.prompt)
            return read_prompt(family.tokenizer, settings.prompt)

    def rewards(self) -> dict[str, nn.Module | str]:
        """Reward name -> loaded reward model, or the reason it is unavailable; loaded once."""
        with self._lock:
            if self._rewards is None:
                family = self.family()
                own = shown_reward_names(family)[:1]
                self._rewards = {}
                for name in self._reward_names or shown_reward_names(family):
                    try:
                        reward = family.reward() if [name] == own else get_reward(name)
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

    def is_teacher(self, column: str) -> bool:
        """Whether the member samples as a family's teacher (its kind's registry entry says so); False for a member
        the family lacks (its column reports the error when run)."""
        try:
            return self.family().sampler(column).teacher
        except ModelLoadError:
            return False

    def kind(self, column: str) -> str:
        """The member's kind ("teacher", "lcm", "mlcm", ...); ModelLoadError if the family has no such member or
        the registry no such kind."""
        return self.family().sampler(column).kind

    def _load_unet(self, column: str) -> tuple[nn.Module, float]:
        with self._lock:
            t0 = time.perf_counter()
            unet = self.family().unet(column).to(self.device)
            return unet, time.perf_counter() - t0

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompt: str | Sequence[str]
              ) -> tuple[dict[str, list[float]], dict[str, str], float]:
        """Every available reward of images in [0,1] (N,3,H,W) under `prompt` (one, or one per image): (scores,
        unavailable, seconds)."""
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        scores, unavailable = {}, {}
        t0 = time.perf_counter()
        for name, reward in self.rewards().items():
            if isinstance(reward, str):
                unavailable[name] = reward
            else:
                values = reward(images.to(self.device), prompts)
                scores[name] = [round(float(v), 3) for v in values]
        return scores, unavailable, time.perf_counter() - t0

    def encode(self, prompt: str) -> torch.Tensor | None:
        """The text-encoder states (1,L,D) of `prompt` as the pipelines compute them (after `read_prompt`), computed
        once per comparison and shared by its columns; None for SDXL families (their pipelines encode)."""
        family = self.family()
        if family.is_sdxl:
            return None
        with self._compute:
            return encode_prompts(family.tokenizer, family.text_encoder, [read_prompt(family.tokenizer, prompt).text])

    def _pipeline(self, column: str) -> Any:
        """The member's pipeline, built once (one batch at a time uses it: the batcher's lane of the column)."""
        with self._lock:
            if column not in self._pipes:
                self._pipes[column] = self.family().pipeline(column)
            return self._pipes[column]

    def _sample_batch(self, key: tuple, jobs: list[tuple[Request, torch.Tensor | None]]) -> list[ColumnResult]:
        """Sample and score requests for one column (`key[0]`) that share steps and guidance in one pipeline call;
        `jobs`: (request, its prompt's states from `encode` or None)."""
        column, requests = key[0], [req for req, _ in jobs]
        pipe = self._pipeline(column)
        states = None if any(s is None for _, s in jobs) else torch.cat([s for _, s in jobs])
        if states is not None and column not in self._empty_states:
            with self._compute:
                self._empty_states[column] = unconditional_embeds(pipe, states)
        # without states the pipeline tokenizes (SDXL)
        with nullcontext() if states is not None else self._compute, count_unet_evals(pipe.unet) as calls:
            t0 = time.perf_counter()
            images = generate_batch(pipe, requests, states, self._empty_states.get(column),
                                    sampling_extras(self.family(), column, pipe))
            seconds = time.perf_counter() - t0
        with self._compute:  # rewards may tokenize the prompts
            scores, unavailable, reward_seconds = self.score(
                torch.cat(images), [req.prompt for req in requests for _ in range(req.num_images)])
        nfe, kind, out, start = calls.samples / sum(len(x) for x in images), self.kind(column), [], 0
        for req, image in zip(requests, images):
            own = {name: values[start:start + len(image)] for name, values in scores.items()}
            out.append(ColumnResult(column, "ok", "", kind, image, req.steps, req.guidance_scale, nfe, seconds,
                                    reward_seconds, 0.0, own, unavailable))
            start += len(image)
        return out

    def run(self, column: str, settings: Settings, states: torch.Tensor | None = None,
            session: set | None = None) -> ColumnResult:
        """Sample and score one column, in a batch with other requests for it at the same settings; `states`: the
        prompt's from `encode` (computed here when None); `session`: the comparison's `sampler.session`. Never
        raises: a member missing from the family, or one whose kind or weights cannot load, is "unavailable"; a
        request the member cannot take or a failure while sampling is "error"."""
        try:
            return self._run(column, settings, states, session)
        finally:
            self.sampler.leave(session, column)  # no batch of this column waits for a request that failed early

    def _run(self, column: str, settings: Settings, states: torch.Tensor | None, session: set | None
             ) -> ColumnResult:
        try:
            kind = self.kind(column)
            unet, load_seconds = self._load_unet(column)
        except ModelLoadError as err:
            return ColumnResult(column, "unavailable", str(err))
        family = self.family()
        try:
            req = settings.request(family.sampler(column), family.defaults(column))
            notes = sampling_notes(family, column, req, unet.config.time_cond_proj_dim is not None)
            licence = family.member(column).get("licence")
            notes += (f"licence: {licence}",) if licence else ()
            # a request of several images draws them from one generator: it cannot share a batch (a fresh key)
            key = (column, req.steps, req.guidance_scale) if req.num_images == 1 else (column, object())
            with self._compute:
                check_request(family, column, req)
            states = self.encode(req.prompt) if states is None else states
            return replace(self.sampler(key, (req, states), session), load_seconds=load_seconds, notes=notes)
        except ModelLoadError as err:
            return ColumnResult(column, "unavailable", str(err), kind)
        except InputError as err:
            return ColumnResult(column, "error", str(err), kind)
        except Exception as err:  # noqa: BLE001 (one column failing must not take the page or the server down)
            return ColumnResult(column, "error", f"{type(err).__name__}: {err}", kind)

    def compare(self, settings: Settings) -> Iterator[ColumnResult]:
        """Run every column, yielding each result as it finishes: the students first (fast), the teacher last (it
        samples beside them, in a thread of its own). The prompt is encoded once for all columns; the comparison is
        a session of the batcher, due in every column, while it runs."""
        try:
            states = self.encode(settings.prompt)
        except ModelLoadError:
            states = None  # each column reports why
        teachers = [c for c in self.columns if self.is_teacher(c)]
        with self.sampler.session(self.columns) as session, ThreadPoolExecutor(1) as background:
            behind = [background.submit(self.run, c, settings, states, session) for c in teachers]
            for column in self.columns:
                if column not in teachers:
                    yield self.run(column, settings, states, session)
            for future in behind:
                yield future.result()

    def reward_vs_steps(self, settings: Settings, steps: Sequence[int] = range(1, STUDENT_STEPS[1] + 1)
                        ) -> list[dict[str, Any]]:
        """Rows {model, steps, reward, se, n, reward_name, teacher} of the family's first available reward (mean and standard error over
        `settings.num_images` images) for every available student at each step count, and one row for the teacher
        at its own settings; unavailable members are left out."""
        rows = []
        for column in sorted(self.columns, key=self.is_teacher):
            teacher = self.is_teacher(column)
            for n in [settings.teacher_steps] if teacher else steps:
                result = self.run(column, replace(settings, student_steps=n))
                if result.status != "ok" or not result.scores:
                    break
                name, values = next(iter(result.scores.items()))
                mean = sum(values) / len(values)
                se = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1) / len(values)) ** 0.5
                rows.append({"model": TITLES.get(column, column), "steps": result.steps, "reward": round(mean, 3),
                             "se": round(se, 3), "n": len(values), "reward_name": name, "teacher": teacher})
                if result.steps != n:  # the member samples at its own steps or timesteps: one point
                    break
        return rows

    def warm_up(self) -> None:
        """Load the family, its rewards and every available member with its pipeline now (the page does on first
        use, the bench before measuring). ModelLoadError when the family itself cannot load."""
        self.rewards()
        for column in self.columns:
            try:
                self.kind(column)
                self._load_unet(column)
                self._pipeline(column)
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

