"""`python -m rglcd generate|score ...`: sample a family member to a PNG, or score an image with the family reward."""

from __future__ import annotations

import argparse
import os
import sys

from rglcd.models import ModelLoadError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rglcd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="sample images from a family member")
    gen.add_argument("--family", default="emoji-64", help="preset name, family.json or folder (default emoji-64)")
    gen.add_argument("--model", default="teacher", help="member of the family (teacher, lcm, rg-lcm, mlcm)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance-scale", type=float, default=5.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num-images", type=int, default=1, help="several images are written as one grid")
    gen.add_argument("--out", required=True, help="PNG path")
    score = sub.add_parser("score", help="score an image against a prompt with the family reward")
    score.add_argument("--family", default="emoji-64")
    score.add_argument("--prompt", required=True)
    score.add_argument("--image", required=True)
    return parser


def run_generate(args: argparse.Namespace) -> str:
    from rglcd.evaluate import save_grid
    from rglcd.models import load_family
    from rglcd.sampling import Request, generate

    family = load_family(args.family)
    family.member(args.model)
    req = Request(args.prompt, args.steps, args.guidance_scale, args.seed, args.num_images)
    images = generate(family, args.model, req)
    path = save_grid(images, args.out, nrow=min(8, len(images)) if len(images) > 1 else 1)
    return f"wrote {path} ({len(images)} image{'s' if len(images) > 1 else ''}, {images.shape[-1]}x{images.shape[-2]})"


def run_score(args: argparse.Namespace) -> str:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from rglcd.models import load_family

    try:
        img = Image.open(args.image).convert("RGB")
    except FileNotFoundError as err:
        raise ModelLoadError(f"image not found: {args.image}") from err
    except UnidentifiedImageError as err:
        raise ModelLoadError(f"not an image file: {args.image}") from err
    family = load_family(args.family)
    reward = family.reward()
    x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    with torch.no_grad():
        return f"{reward(x, [args.prompt]).item():.3f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import diffusers
    import transformers

    from rglcd.sampling import InputError

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()

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
