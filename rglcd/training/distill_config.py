"""The settings of `train/distill.py` (the distillation methods): a top level for the run, one section per concern
the methods share, and the sections the methods own (`rglcd.methods.Method.sections`: `mlcm`, `rg`, `proxy`),
collected from the registry into `DistillConfig`.

Every setting is a flat `--flag` and a flat recipe key (`rglcd.training.settings`); in code it is read from its
section, e.g. `cfg.optim.max_steps`, `cfg.mlcm.segments`, `cfg.rg.reward_scale`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rglcd.consistency import LOSS_TYPES
from rglcd.data.emoji import CAPTION_SETS
from rglcd.data.stream import MODES
from rglcd.inputs import MAX_SEED
from rglcd.methods import Trainer, method_help, method_sections, trainer_methods
from rglcd.models import EXPORT_DTYPES
from rglcd.objectives import LCDLoss
from rglcd.training.settings import build_config, section, setting
from rglcd.training.step import COND_PROJ_INITS
from rglcd.training.tracking import REPORT_TO


@dataclass
class OptimSettings:
    """Optimisation: batch, learning rate and length, accumulation, clipping, weight decay, EMA target."""

    batch_size: int = setting(32, "micro-batch size per process", low=1)
    learning_rate: float = setting(2e-4, "the student's AdamW learning rate, constant after the warm-up", low=0)
    warmup_steps: int = setting(100, "optimiser steps of linear learning-rate warm-up", low=0)
    max_steps: int = setting(2000, "optimiser steps of the run; the student is exported when it reaches them", low=1)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimiser step (a step counts optimiser steps)",
                                               low=1)
    max_grad_norm: float = setting(1.0, "clip the student's gradient norm to this (0: no clipping)", low=0)
    weight_decay: float = setting(0.0, "the student's AdamW weight decay (diffusers' LCD script: 1e-2; RG-LCD's: 0)",
                                  low=0)
    ema_decay: float = setting(0.95, "decay of the full-model student's EMA target (LoRA has no EMA target)",
                               low=0, high=1)


@dataclass
class LCDSettings:
    """The consistency distillation step: guidance range, DDIM grid, distance, guidance embedding."""

    w_min: float = setting(LCDLoss.w_min, "lowest guidance w drawn per sample, LCM convention (pipeline guidance scale - 1)",
                           low=0)
    w_max: float = setting(LCDLoss.w_max, "highest guidance w drawn per sample, LCM convention", low=0)
    w_embedding_dim: int = setting(LCDLoss.w_embedding_dim, "size of the guidance embedding the full-model student takes", low=1)
    num_ddim_timesteps: int = setting(LCDLoss.num_ddim_timesteps, "points of the skipping-step DDIM grid the teacher steps on (N)", low=1)
    loss_type: str = setting(LCDLoss.loss_type, "distance between student and target: huber (pseudo-Huber) | l2",
                             choices=LOSS_TYPES)
    huber_c: float = setting(LCDLoss.huber_c, "the pseudo-Huber distance's c", low=0)
    cond_proj_init: str = setting("zero", "the student's guidance projection at start: zero (the student starts as "
                                          "the teacher) | random (its layer's default init, as diffusers' script)",
                                  choices=COND_PROJ_INITS)


@dataclass
class DataSettings:
    """Training data: the emoji set, webdataset shards, an image folder or hf: data; what to draw from it."""

    data: str = setting("emoji", "emoji, a webdataset shard pattern ('shards/{00000..00099}.tar'), an image folder, "
                                 "hf:<dataset> or tensors:<file>")
    resolution: int | None = setting(None, "training image size for shard / folder data (default: the family's)", low=1)
    cache_latents: bool = setting(False, "encode shard / folder data once into a cache of latents and text states")
    include_flags: bool = setting(False, "emoji data: include the flag emoji")
    limit_concepts: int | None = setting(None, "emoji data: train on the first this many concepts only", low=1)
    phrasings: int | None = setting(None, "emoji data: draw captions from the first this many training phrasings "
                                          "(4: the original templates of the students shipped until issue 19); "
                                          "none: all of --captions", low=1)
    captions: str = setting("templates", "emoji data: the training caption set, templates (12 phrasings) | wide (48) | "
                                         "words (64 a concept: wide and 16 with an unrelated word; "
                                         "rglcd.data.emoji.CAPTION_SETS)", choices=CAPTION_SETS)
    target_captions: str = setting("same", "emoji data: the caption the teacher step and the target see: same (the "
                                           "student's, LCD) | name (the concept's bare name, phrasing 0, while the "
                                           "student sees the drawn phrasing: phrasings are taught to follow names)",
                                   choices=("same", "name"))
    cfg_dropout: float = setting(0.0, "probability of replacing a caption with the empty one", low=0, high=1)
    data_latents: str = setting("mode", "AutoencoderKL data latents: the posterior's mode | sample (a fresh draw "
                                        "each step, as diffusers' LCD script; streamed shard / folder data only)",
                                choices=("mode", "sample"))
    data_mode: str = setting("resampled", "shard data: resampled (each DataLoader worker draws shards with "
                                          "replacement, seeded by seed, rank and resume position; the training "
                                          "default) | epoch (each sample once per epoch, shards split by rank and "
                                          "worker)", choices=MODES)
    shuffle_buffer: int = setting(1000, "shard data: records in each worker's shuffle buffer (0: stream order)", low=0)
    dataloader_num_workers: int | None = setting(None, "shard / folder / hf: data: DataLoader processes per rank that "
                                                       "decode, resize and crop (0: the training process; none: "
                                                       "min(4, CPUs - 1))", low=0)
    trajectory_data: int = setting(0, "train on this many cached teacher trajectories (0: noised data latents)", low=0)
    trajectory_batch: int = setting(64, "teacher batch when writing the trajectories", low=1)


@dataclass
class SpeedSettings:
    """Precision and speed: mixed precision, teacher autocast, memory format, compile, checkpointing."""

    mixed_precision: str | None = setting(None, "no | bf16 | fp16; none: what `accelerate launch` was given",
                                          choices=("no", "bf16", "fp16"))
    teacher_autocast: str | None = setting(None, "bf16 | fp16: run the teacher's no-grad forwards under autocast "
                                                 "to this dtype even in fp32 training, as diffusers' LCD scripts "
                                                 "(emoji-64: loss within 0.4% of fp32)", choices=("bf16", "fp16"))
    channels_last: bool = setting(False, "UNet weights and activations in NHWC (faster convolutions on some devices)")
    compile: bool = setting(False, "torch.compile the UNets (the first steps then include compilation)")
    gradient_checkpointing: bool = setting(False, "recompute the student's activations in the backward pass "
                                                  "(less memory, more time)")


@dataclass
class LoRASettings:
    """LoRA: distil adapters on the teacher instead of the full model (LCM-LoRA)."""

    lora_rank: int = setting(0, "0: distil the full model; r > 0: LoRA adapters of rank r on the teacher", low=0)
    lora_alpha: float | None = setting(None, "LoRA alpha (default: the rank)", low=0)


@dataclass
class DistillRun:
    """A distillation run: which method, family and member, where it writes, how often it saves and validates."""

    method: str = setting("lcd", method_help(Trainer.DISTILL), choices=trainer_methods(Trainer.DISTILL))
    family: str = setting("emoji-64", "the family to distil: a name (emoji-64, sd21, sdxl) or a family file's folder")
    teacher: str = setting("teacher", "the family member to distil")
    member: str | None = setting(None, "the name the exported student gets in the family file (default: the "
                                       "method's: lcm, rg-lcm, mlcm; with LoRA lcm-lora, ...)")
    output_dir: str = setting("runs/emoji-64/lcm", "checkpoints, logs and validation grids")
    export_dir: str | None = setting("auto", "where the student is exported; auto: runs/<family>/<member>, "
                                             "registered in runs/<family>/family.json; none: no export")
    replace_shipped: bool = setting(False, "allow exporting into assets/ (the shipped family) and registering there")
    export_dtype: str = setting("fp32", "fp32 | fp16: the exported weights file (fp16 halves it; loading upcasts)",
                                choices=EXPORT_DTYPES)
    seed: int = setting(0, "seed of the initialisations and of every batch draw", low=0, high=MAX_SEED)
    resume: str | None = setting("latest", "latest | a checkpoint folder | none (start afresh)")
    stop_at: int | None = setting(None, "stop (after a checkpoint) at this step; run again to go on", low=1)
    checkpoint_every: int = setting(250, "optimiser steps between checkpoints", low=1)
    log_every: int = setting(10, "steps between logged scalars (each read back from the device once)", low=1)
    eval_every: int = setting(500, "steps between validations (grids and prompt following); 0: none", low=0)
    eval_steps: int = setting(4, "the student's sampling steps in validation", low=1)
    eval_guidance: float = setting(5.0, "pipeline guidance scale in validation", low=0)
    report_to: str = setting("tensorboard", "tensorboard | wandb | all | none", choices=REPORT_TO)
    optim: OptimSettings = section(OptimSettings)
    lcd: LCDSettings = section(LCDSettings)
    dataset: DataSettings = section(DataSettings)
    speed: SpeedSettings = section(SpeedSettings)
    lora: LoRASettings = section(LoRASettings)

    @classmethod
    def of(cls, **settings: Any) -> Any:
        """A config from flat settings, as the command line and recipes give them: `DistillConfig.of(segments=4)`."""
        return build_config(cls, settings)


DistillConfig = dataclasses.make_dataclass(
    "DistillConfig", [(name, cls, section(cls)) for name, cls in method_sections(Trainer.DISTILL).items()],
    bases=(DistillRun,), namespace={"__module__": __name__, "__doc__": DistillRun.__doc__ + " With the sections "
                                    "the distillation methods own (`rglcd.methods.method_sections`)."})
