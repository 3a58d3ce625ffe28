"""`python -m rglcd generate|score ...`: sample a family member to an image file, or score an image with the family
reward. Bad input is one `error:` line on stderr and exit status 2, found before any model loads where it can be."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rglcd.images import GRID_PAD, grid_tiles, looks_like_grid, on_white, save_grid
from rglcd.inputs import (GUIDANCE, MAX_IMAGES, MAX_SEED, InputError, OneLineParser, check_prompt_tokens,
                          member_request, output_image_path, prompt_text, sampling_notes)
from rglcd.logs import quiet_libraries
from rglcd.models import ModelLoadError, load_family
from rglcd.rewards import reward_label
from rglcd.sampling import generate, read_prompt


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m rglcd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--family", default="emoji-64", help="preset name, family.json or folder (default emoji-64)")
    common.add_argument("--prompt", required=True)
    common.add_argument("--verbose", action="store_true", help="show the libraries' loading bars and warnings")
    gen = sub.add_parser("generate", parents=[common], help="sample images from a family member")
    gen.add_argument("--model", default="teacher", help="member of the family (teacher, lcm, rg-lcm, mlcm)")
    gen.add_argument("--steps", default=None, help="1-50 for students, up to 999 for the emoji-64 teacher (default: "
                                                   "the member's own, else 25)")
    gen.add_argument("--guidance-scale", default=None, help=f"{GUIDANCE[0]:g}-{GUIDANCE[1]:g} (1: no guidance; "
                                                            "default: the member's own, else 5)")
    gen.add_argument("--eta", default=None, help="0-1, for the kinds that take one (TCD's gamma; default: the "
                                                 "member's own)")
    gen.add_argument("--seed", default="0", help=f"0-{MAX_SEED}")
    gen.add_argument("--num-images", default="1", help=f"1-{MAX_IMAGES}; several are written as one grid")
    gen.add_argument("--out", required=True, help="image path (.png, .jpg, .webp); missing folders are created")
    score = sub.add_parser("score", parents=[common], help="score an image against a prompt with the family reward")
    score.add_argument("--image", required=True)
    return parser


def run_generate(args: argparse.Namespace) -> str:
    out = output_image_path(args.out)
    prompt = prompt_text(args.prompt)
    family = load_family(args.family)
    req = member_request(family, args.model, prompt, args.steps, args.guidance_scale, args.eta, args.seed,
                         args.num_images)
    for notice in read_prompt(family.tokenizer, prompt).notices:
        print(f"note: {notice}", file=sys.stderr)
    embeds = family.unet(args.model).config.time_cond_proj_dim is not None
    for note in sampling_notes(family, args.model, req, embeds, steps_given=args.steps is not None):
        print(f"note: {note}", file=sys.stderr)
    licence = family.member(args.model).get("licence")
    if licence:
        print(f"note: {args.model} is licensed {licence}", file=sys.stderr)
    images = generate(family, args.model, req)
    path = save_grid(images, out, nrow=min(8, len(images)) if len(images) > 1 else 1)
    return f"wrote {path} ({len(images)} image{'s' if len(images) > 1 else ''}, {images.shape[-1]}x{images.shape[-2]})"


def open_image(path: str) -> Image.Image:
    """The image file at `path`, read (not yet converted); a missing, unreadable or huge file is one ModelLoadError."""
    try:
        img = Image.open(path)
        img.load()
    except (FileNotFoundError, IsADirectoryError) as err:
        raise ModelLoadError(f"image not found: {path}") from err
    except UnidentifiedImageError as err:
        raise ModelLoadError(f"not an image file: {path}") from err
    except Image.DecompressionBombError as err:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # Pillow's decompression-bomb limit
        raise ModelLoadError(f"image too large to score: {path} has over {limit} pixels; scale it down (the reward "
                             "sees it at the family's resolution)") from err
    return img


def run_score(args: argparse.Namespace) -> str:
    prompt = prompt_text(args.prompt)
    img = open_image(args.image)
    family = load_family(args.family)
    tiles = grid_tiles(img)
    if tiles is None and looks_like_grid(img.size, family.resolution):
        tile = family.resolution
        raise InputError(f"{args.image} ({img.width}x{img.height}) looks like a grid without its layout: save "
                         f"each {tile}x{tile} tile (x = {GRID_PAD} + {tile + GRID_PAD}c, y = {GRID_PAD} + "
                         f"{tile + GRID_PAD}r) as its own file, or score generate's PNG")
    check_prompt_tokens(family, prompt)
    reading = read_prompt(family.tokenizer, prompt)
    for notice in reading.notices:
        print(f"note: {notice}", file=sys.stderr)
    reward = family.reward()
    pixels = np.stack([np.array(on_white(t)) for t in tiles or [img]])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        scores = reward(x, [reading.text] * len(x)).tolist()
    label = reward_label(family.reward_name)
    if tiles is None:
        return f"{label}: {scores[0]:.3f}"
    values = " ".join(f"{v:.3f}" for v in scores)
    return f"{label}, {len(scores)} grid tiles in order: {values} (mean {sum(scores) / len(scores):.3f})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        print(run_generate(args) if args.command == "generate" else run_score(args))
    except (InputError, ModelLoadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 (a CLI prints one line; RGLCD_DEBUG=1 shows the traceback)
        if os.environ.get("RGLCD_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {err} (set RGLCD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
