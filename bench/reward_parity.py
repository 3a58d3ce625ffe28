"""Parity of rglcd's ImageReward, aesthetic and HPSv2.1 rewards with the original code, on random weights.

Each check builds the original model with random weights (its own init plus noise, so every tensor matters), saves
its state dict in the original checkpoint format, loads that file with rglcd's loader and converter, and compares
the scores of both on the same random images and prompts: max |ours - original|, also relative to the range
of the original's scores over those inputs.
- imagereward: ImageReward's `score_gard` (BLIP ViT-L/16 + BERT with cross-attention + MLP) on normalised pixels,
  and its PIL `score` path end to end (224x224 images: resizing is the identity there; 256x320: PIL's resize vs
  ours, expected to differ a little).
- aesthetic: OpenAI `clip` ViT-L/14 `encode_image`, L2-normalised, + the MLP of ImageReward's AestheticScore (the
  improved-aesthetic-predictor head).
- hpsv2.1: open_clip ViT-H-14 (what HPS_v2.1_compressed.pt holds; the hpsv2 wheel's own copy of open_clip cannot
  import, its BPE vocabulary file is missing), 100 x cos of normalised features.

Not runnable on this project's CPU machines (torchvision cannot import next to torch 2.13, see
shared/notes/environment.md); there it stops naming what is missing. Run it where the originals import, e.g. a GPU
machine whose torchvision matches its torch, with the hub (or its cache) reachable for bert-base-uncased and the
laion/CLIP-ViT-H-14-laion2B-s32B-b79K config and tokenizer:

    pip install -r requirements.txt   # with that machine's torch instead of the pin
    pip install --no-deps image-reward==1.5 clip-anytorch open-clip-torch timm==0.6.13 fairscale==0.4.13
    pip install transformers==4.46.3 datasets ftfy regex   # its BLIP code fails to import on 4.56
    python bench/reward_parity.py --device cuda [--only imagereward aesthetic hpsv2.1] [--tol 1e-3]

Exit status 1 if a model check's relative difference exceeds --tol, 2 if a package is missing.

Run once on the project's CPU machine from a side venv (transformers 4.46.3, image-reward 1.5, clip-anytorch 2.6,
timm 0.6.13, fairscale 0.4.13, torchvision 0.29.2 with its two missing op schemas defined first, ImageReward's
package __init__ skipped, bert-base-uncased read from the MiniLM package's identical vocabulary), seed 0, 4 prompts:
imagereward token ids 0 mismatches; score_gard max|diff| 0.0 (score range 0.27); PIL score 224x224 6.6e-7;
PIL score 256x320 4.1e-3 (0.8% of the range: PIL's bicubic resize vs torch's); aesthetic 0.0. hpsv2.1 not run
(it needs the hub for the ViT-H-14 config and tokenizer).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

from rglcd.models import MINILM
from rglcd.rewards.clip import OPENAI_MEAN, OPENAI_STD, VIT_H_14, load_every_tensor, load_hps, open_clip_to_hf

NEEDS = {  # module -> pip name, per check
    "imagereward": {"ImageReward": "image-reward", "clip": "clip-anytorch", "timm": "timm==0.6.13",
                    "fairscale": "fairscale", "torchvision": "torchvision", "datasets": "datasets"},
    "aesthetic": {"ImageReward": "image-reward", "clip": "clip-anytorch", "torchvision": "torchvision"},
    "hpsv2.1": {"open_clip": "open-clip-torch", "torchvision": "torchvision"},
}
# BLIP's configs/med_config.json, as THUDM/ImageReward ships it.
MED_CONFIG = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
              "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
              "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2,
              "vocab_size": 30524, "encoder_width": 768, "add_cross_attention": True}
PROMPTS = ["a photograph of an astronaut riding a horse", "a red apple on a wooden table, studio light",
           "an oil painting of a lighthouse in a storm", "cat"]


def missing_packages(checks: list[str]) -> list[str]:
    """pip names of the modules the chosen checks import that this environment lacks."""
    need = {module: pip for check in checks for module, pip in NEEDS[check].items()}
    gone = [pip for module, pip in need.items() if importlib.util.find_spec(module) is None]
    if "imagereward" in checks:
        import transformers

        if tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (4, 56):
            gone.append(f"transformers==4.46.3 (ImageReward's BLIP code does not import on {transformers.__version__})")
    return gone


def perturbed(module: torch.nn.Module, scale: float = 0.01) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def unit_gain(head: torch.nn.Module) -> torch.nn.Module:
    """Redraw each Linear weight with std 1/sqrt(fan_in): with the originals' own head inits every image scores
    nearly the same, which would hide a wrong image path."""
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5)
    return head


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / torch.tensor(OPENAI_STD, device=images.device).view(1, 3, 1, 1)


def row(check: str, ours: torch.Tensor, theirs: torch.Tensor, gated: bool = True) -> dict:
    """max |ours - theirs|, and relative to the spread of the original's scores over the inputs."""
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    diff, spread = (ours - theirs).abs().max().item(), (theirs.max() - theirs.min()).item()
    return {"check": check, "n": len(ours), "max_abs_diff": diff, "score_range": spread,
            "relative": diff / max(spread, 1e-12), "gated": gated}


def clip_config(state: dict[str, torch.Tensor], act: str, heads: tuple[int, int]) -> dict:
    """CLIPConfig arguments for an open_clip / OpenAI CLIP state dict, read from its shapes."""
    def tower(prefix: str, heads: int) -> dict:
        layers = {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}
        fc = state[prefix + "0.mlp.c_fc.weight"]
        return dict(hidden_size=fc.shape[1], intermediate_size=fc.shape[0], num_attention_heads=heads,
                    num_hidden_layers=len(layers), hidden_act=act)

    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return dict(vision_config=dict(tower("visual.transformer.resblocks.", heads[0]), image_size=grid * patch,
                                   patch_size=patch),
                text_config=dict(tower("transformer.resblocks.", heads[1]),
                                 vocab_size=state["token_embedding.weight"].shape[0],
                                 max_position_embeddings=state["positional_embedding"].shape[0]),
                projection_dim=state["text_projection"].shape[1])


def check_imagereward(tmp: Path, device: str, bert: str) -> list[dict]:
    import numpy as np
    from ImageReward.ImageReward import ImageReward
    from PIL import Image

    from rglcd.rewards.blip import load_imagereward

    (tmp / "med_config.json").write_text(json.dumps(MED_CONFIG))
    original = perturbed(ImageReward(med_config=str(tmp / "med_config.json"), device=device)).to(device)
    unit_gain(original.mlp)
    torch.save(original.state_dict(), tmp / "ImageReward.pt")
    ours = load_imagereward(str(tmp), tokenizer=bert).to(device)
    images = torch.rand(len(PROMPTS), 3, 224, 224, device=device)
    tok = original.blip.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35,
                                  return_tensors="pt").to(device)
    rows = [row("imagereward token ids (ours vs BLIP's tokenizer)",
                (ours.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35,
                                return_tensors="pt").input_ids != tok.input_ids.cpu()).sum(1).float(),
                torch.zeros(len(PROMPTS)))]
    with torch.no_grad():
        theirs = original.score_gard(tok.input_ids, tok.attention_mask, normalise(images))[:, 0]
        rows.append(row("imagereward score_gard, same pixels", ours(images, PROMPTS), theirs))
        for size, gated in (((224, 224), True), ((256, 320), False)):
            pixels = np.random.default_rng(0).integers(0, 256, (len(PROMPTS), *size, 3), dtype=np.uint8)
            theirs = torch.tensor([original.score(p, Image.fromarray(a)) for p, a in zip(PROMPTS, pixels)])
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).to(device)
            rows.append(row(f"imagereward PIL score {size[0]}x{size[1]} uint8", ours(batch, PROMPTS), theirs, gated))
    return rows


def check_aesthetic(tmp: Path, device: str) -> list[dict]:
    from clip.model import CLIP
    from ImageReward.models.AestheticScore import MLP
    from transformers import CLIPConfig, CLIPModel

    from rglcd.rewards.aesthetic import AESTHETIC_FILE, load_aesthetic

    clip = perturbed(CLIP(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12).float()).to(device)
    head = unit_gain(perturbed(MLP(768))).to(device)
    state = {k: v.cpu() for k, v in clip.state_dict().items()}
    hf = CLIPModel(CLIPConfig(**clip_config(state, "quick_gelu", (16, 12))))
    load_every_tensor(hf, open_clip_to_hf(state), "OpenAI CLIP ViT-L/14 -> CLIPModel")
    hf.save_pretrained(tmp / "clip-vit-large-patch14")
    torch.save(head.state_dict(), tmp / AESTHETIC_FILE)
    ours = load_aesthetic(str(tmp / AESTHETIC_FILE), base=str(tmp / "clip-vit-large-patch14")).to(device)
    images = torch.rand(len(PROMPTS), 3, 224, 224, device=device)
    with torch.no_grad():
        features = clip.encode_image(normalise(images))
        theirs = head(features / features.norm(dim=-1, keepdim=True))[:, 0]
        return [row("aesthetic (OpenAI CLIP ViT-L/14 + MLP)", ours(images, PROMPTS), theirs)]


def check_hps(tmp: Path, device: str) -> list[dict]:
    import open_clip

    original = perturbed(open_clip.create_model("ViT-H-14", pretrained=None)).to(device)
    torch.save({"state_dict": original.state_dict()}, tmp / "HPS_v2.1_compressed.pt")
    ours = load_hps(str(tmp / "HPS_v2.1_compressed.pt"), base=VIT_H_14).to(device)
    tokens = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)
    hf_tokens = ours.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                               return_tensors="pt").input_ids
    images = torch.rand(len(PROMPTS), 3, 224, 224, device=device)
    with torch.no_grad():
        img = original.encode_image(normalise(images), normalize=True)
        txt = original.encode_text(tokens.to(device), normalize=True)
        return [row("hpsv2.1 token ids (ours vs open_clip's)", (hf_tokens != tokens).sum(1).float(),
                    torch.zeros(len(PROMPTS))),
                row("hpsv2.1 100 x cos (open_clip ViT-H-14)", ours(images, PROMPTS), 100 * (img * txt).sum(-1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(NEEDS), default=list(NEEDS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bert", default=MINILM, help="our ImageReward tokenizer source (bert-base-uncased vocab)")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest relative difference that passes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gone = missing_packages(args.only)
    if gone:
        print(f"reward_parity: the original packages do not import here; missing: {', '.join(gone)}. "
              f"Run it where they do (see `python bench/reward_parity.py --help`).", file=sys.stderr)
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for check in args.only:
            torch.manual_seed(args.seed)
            folder = Path(tmp) / check
            folder.mkdir()
            if check == "imagereward":
                rows += check_imagereward(folder, args.device, args.bert)
            elif check == "aesthetic":
                rows += check_aesthetic(folder, args.device)
            else:
                rows += check_hps(folder, args.device)
    print(f"{'check':<52} {'n':>3} {'max|diff|':>10} {'range':>10} {'relative':>9}  ok")
    failed = False
    for r in rows:
        ok = r["relative"] <= args.tol if r["gated"] else None
        failed |= ok is False
        print(f"{r['check']:<52} {r['n']:>3} {r['max_abs_diff']:>10.3g} {r['score_range']:>10.3g} "
              f"{r['relative']:>9.2g}  {'-' if ok is None else ok}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
