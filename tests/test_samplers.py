"""The sampler registry (`rglcd.samplers`): what each kind declares, that nothing else chooses by a kind's name, the
member sampling defaults and their checks, and each published model's sampler against diffusers' own pipeline
call with the same scheduler, on the real emoji-64 family."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, LatentConsistencyModelPipeline, LCMScheduler,
                       StableDiffusionPipeline, TCDScheduler)

from rglcd.inputs import InputError, member_request, sampling_notes
from rglcd.models import ModelLoadError, load_family, relocated_spec
from rglcd.samplers import SAMPLERS, MemberDefaults, member_defaults, sampler
from rglcd.sampling import generate

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["red apple", "rocket"]


def test_registry_declares_each_kind():
    assert list(SAMPLERS) == ["teacher", "lcm", "mlcm", "cm", "tcd", "ddim-trailing", "euler-trailing",
                              "lcm-timesteps"]
    assert [k for k, s in SAMPLERS.items() if s.teacher] == ["teacher"]
    assert sampler("teacher").scheduler is DDIMScheduler and sampler("teacher").cfg_pipeline
    assert sampler("ddim-trailing").config == {"timestep_spacing": "trailing"} == sampler("euler-trailing").config
    assert sampler("euler-trailing").scheduler is EulerDiscreteScheduler
    assert issubclass(sampler("tcd").scheduler, TCDScheduler) and sampler("tcd").eta_option == "gamma"
    assert [k for k, s in SAMPLERS.items() if s.fixed_timesteps] == ["lcm-timesteps"]
    assert sampler("teacher").step_limit({"num_train_timesteps": 1000, "steps_offset": 1}) == 999
    assert sampler("lcm").step_limit({"num_train_timesteps": 1000}) == 50
    with pytest.raises(ValueError, match="unknown member kind 'pcm'; known: teacher, lcm"):
        sampler("pcm")


def string_compares(names: list[str]) -> re.Pattern:
    """A compare of a value with one of `names` as a string literal: `x == "a"`, `"a" != x`, `x in ("a", ...)`."""
    alt = "|".join(re.escape(n) for n in names)
    literal = rf"""['"]({alt})['"]"""
    return re.compile(rf"""(==|!=)\s*{literal}|{literal}\s*(==|!=)|\bin\s*[(\[{{][^)\]}}]*{literal}""")


def compare_offenders(pattern: re.Pattern, skip: tuple[str, ...] = ()) -> list[str]:
    """file:line of every match of `pattern` in rglcd/, train/ and app.py (files named in `skip` left out)."""
    offenders = []
    for path in [*ROOT.glob("rglcd/**/*.py"), *ROOT.glob("train/*.py"), ROOT / "app.py"]:
        if path.name not in skip:
            offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                          if pattern.search(line)]
    return offenders


def test_no_kind_trainer_or_role_name_compares_outside_the_registries():
    """Kinds (member roles: the teacher is a kind) and trainers are chosen by registry entries, never by name."""
    from rglcd.methods import Trainer

    kinds = string_compares(list(SAMPLERS))
    assert kinds.search('if kind == "teacher":') and kinds.search("if 'mlcm' != k") and kinds.search(
        'x in ("lcm", "tcd")') and not kinds.search('kind = "lcm"')
    assert not compare_offenders(kinds, ("samplers.py",))
    assert not compare_offenders(re.compile(r"TEACHER_KIND|\.trainer\s*(==|!=)|(==|!=)\s*TEACHER\b|\bTEACHER\s*(==|!=)"))
    assert not compare_offenders(string_compares([t.value for t in Trainer]), ("methods.py",))


@pytest.mark.parametrize("entry, message", [
    ({"steps": 0}, "steps must be a positive whole number"),
    ({"steps": True}, "steps must be a positive whole number"),
    ({"guidance": 0}, "guidance must be a pipeline guidance scale >= 1"),
    ({"guidance": "high"}, "guidance must be a pipeline guidance scale >= 1"),
    ({"eta": 0.3}, "eta is given but kind 'lcm' takes none"),
    ({"timesteps": [999, 749]}, "timesteps are given but kind 'lcm' samples at a step count"),
])
def test_member_defaults_refuse_bad_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        member_defaults(entry, sampler("lcm"))


def test_member_defaults_of_fixed_timesteps_and_eta():
    fixed = sampler("lcm-timesteps")
    assert member_defaults({"timesteps": [999, 749, 499, 249]}, fixed) == MemberDefaults(
        timesteps=(999, 749, 499, 249))
    for bad in ([249, 499], [1000], [999, 999], [], [999.0]):
        with pytest.raises(ValueError, match="timesteps must be strictly descending"):
            member_defaults({"timesteps": bad}, fixed)
    with pytest.raises(ValueError, match="must give 'timesteps'"):
        member_defaults({}, fixed)
    assert member_defaults({"eta": 0.5, "steps": 4, "guidance": 1}, sampler("tcd")) == MemberDefaults(4, 1.0, 0.5)
    with pytest.raises(ValueError, match="eta must be a number between 0 and 1"):
        member_defaults({"eta": 1.5}, sampler("tcd"))


@pytest.fixture(scope="module")
def zoo_family(tmp_path_factory: pytest.TempPathFactory) -> str:
    """emoji-64 (its real teacher and LCM) with one member of each published model's sampler: the teacher's UNet
    where the published model has no guidance embedding (a LoRA, SDXL-Lightning's or DMD2's UNet), the LCM's where
    it has one."""
    folder = tmp_path_factory.mktemp("zoo")
    spec = relocated_spec(load_family("emoji-64"), folder)
    teacher, lcm = spec["members"]["teacher"]["unet"], spec["members"]["lcm"]["unet"]
    spec["members"].update({
        "ddim-trailing": {"unet": teacher, "kind": "ddim-trailing", "steps": 4, "guidance": 3.0},
        "euler-trailing": {"unet": teacher, "kind": "euler-trailing", "steps": 4, "guidance": 3.0},
        "fixed": {"unet": teacher, "kind": "lcm-timesteps", "timesteps": [999, 749, 499, 249]},
        "fixed-guided": {"unet": lcm, "kind": "lcm-timesteps", "timesteps": [999, 499], "guidance": 4.0},
        "tcd-unguided": {"unet": teacher, "kind": "tcd", "eta": 0.3, "steps": 4},
        # PCM's demo: TCDScheduler(timestep_spacing="trailing"), which TCDScheduler does not read
        "tcd-trailing": {"unet": lcm, "kind": "tcd", "eta": 0.5, "steps": 4,
                         "scheduler": {"timestep_spacing": "trailing"}},
    })
    (folder / "family.json").write_text(json.dumps(spec))
    return str(folder)


def diffusers_pipeline(family, member: str, cls: type, scheduler) -> object:
    """diffusers' own pipeline `cls` over the member's UNet and the family's parts, with `scheduler`."""
    extra = {} if cls is LatentConsistencyModelPipeline else {"requires_safety_checker": False}
    pipe = cls(vae=family.vae, text_encoder=family.text_encoder, tokenizer=family.tokenizer,
               unet=family.unet(member), scheduler=scheduler, safety_checker=None, feature_extractor=None, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("member, cls, scheduler, call", [
    ("ddim-trailing", StableDiffusionPipeline, lambda c: DDIMScheduler.from_config(c, timestep_spacing="trailing"),
     {"num_inference_steps": 4, "guidance_scale": 3.0}),
    ("euler-trailing", StableDiffusionPipeline,
     lambda c: EulerDiscreteScheduler.from_config(c, timestep_spacing="trailing"),
     {"num_inference_steps": 4, "guidance_scale": 3.0}),
    ("fixed", StableDiffusionPipeline, LCMScheduler.from_config,
     {"timesteps": [999, 749, 499, 249], "guidance_scale": 5.0}),
    ("fixed-guided", LatentConsistencyModelPipeline, LCMScheduler.from_config,
     {"timesteps": [999, 499], "guidance_scale": 4.0}),
    ("tcd-unguided", StableDiffusionPipeline, TCDScheduler.from_config,
     {"num_inference_steps": 4, "guidance_scale": 5.0, "eta": 0.3}),
    ("tcd-trailing", StableDiffusionPipeline, lambda c: TCDScheduler.from_config(c, timestep_spacing="trailing"),
     {"num_inference_steps": 4, "guidance_scale": 5.0, "eta": 0.5}),
])
def test_each_published_sampler_draws_as_diffusers_own_pipeline_call(zoo_family, member, cls, scheduler, call):
    """Our member, sampled the way every front end samples it (its own defaults through `member_request` and
    `generate`), against diffusers' own pipeline with the published model's scheduler and call: the same images."""
    family = load_family(zoo_family)
    req = member_request(family, member, PROMPTS[0], seed=7, num_images=2)
    ours = generate(family, member, req)
    theirs = diffusers_pipeline(family, member, cls, scheduler(family.scheduler_config))(
        [PROMPTS[0]] * 2, generator=torch.Generator().manual_seed(7), output_type="pt", **call).images
    assert ours.shape == (2, 3, 64, 64)
    assert torch.allclose(ours, theirs.float(), atol=1e-6), (ours - theirs).abs().max()


def test_the_default_eta_of_a_tcd_member_is_its_own_and_a_user_eta_overrides_it(zoo_family):
    family = load_family(zoo_family)
    own = generate(family, "tcd-unguided", member_request(family, "tcd-unguided", "red apple", seed=1))
    again = generate(family, "tcd-unguided", member_request(family, "tcd-unguided", "red apple", eta=0.3, seed=1))
    other = generate(family, "tcd-unguided", member_request(family, "tcd-unguided", "red apple", eta=0.9, seed=1))
    assert torch.equal(own, again) and not torch.equal(own, other)
    with pytest.raises(InputError, match="eta applies to the kinds that take one, not to lcm"):
        member_request(family, "lcm", "red apple", eta=0.3)


def test_member_defaults_apply_unless_overridden_and_notes_say_what_does_not_apply(zoo_family):
    family = load_family(zoo_family)
    req = member_request(family, "ddim-trailing", "red apple")
    assert (req.steps, req.guidance_scale) == (4, 3.0)
    req = member_request(family, "ddim-trailing", "red apple", steps="8", guidance="2")
    assert (req.steps, req.guidance_scale) == (8, 2.0)
    assert (member_request(family, "lcm", "red apple").steps, member_request(family, "teacher", "x").steps) == (25, 25)
    fixed = member_request(family, "fixed", "red apple", steps=8)
    assert fixed.steps == 4
    assert sampling_notes(family, "fixed", fixed, embeds_guidance=False) == (
        "samples at its fixed timesteps [999, 749, 499, 249] (the step setting does not apply)",)
    lcm = member_request(family, "lcm", "red apple")
    assert sampling_notes(family, "lcm", lcm, embeds_guidance=True) == (
        "guidance 5 is embedded in the UNet as w = 4 (no classifier-free guidance pass)",)
    assert sampling_notes(family, "teacher", member_request(family, "teacher", "x"), embeds_guidance=False) == ()


def test_a_bad_member_entry_is_one_clear_error(zoo_family, tmp_path):
    spec = json.loads((Path(zoo_family) / "family.json").read_text())
    spec["members"]["fixed"]["timesteps"] = [249, 999]
    spec["members"]["odd"] = {"unet": spec["members"]["teacher"]["unet"], "kind": "pcm"}
    (tmp_path / "family.json").write_text(json.dumps(spec))
    family = load_family(str(tmp_path))
    with pytest.raises(ModelLoadError, match="member fixed of emoji-64: timesteps must be strictly descending"):
        member_request(family, "fixed", "red apple")
    with pytest.raises(ModelLoadError, match="member odd of emoji-64: unknown member kind 'pcm'"):
        family.pipeline("odd")


def test_the_apps_settings_give_way_to_a_members_own_unless_turned_off():
    from rglcd.demo import Settings, parse_settings

    own = MemberDefaults(steps=2, guidance=1.0)
    assert (Settings("x").request(sampler("tcd"), own).steps, Settings("x").request(sampler("tcd"), own).guidance_scale
            ) == (2, 1.0)
    off = Settings("x", own_settings=False).request(sampler("tcd"), own)
    assert (off.steps, off.guidance_scale) == (4, 5.0)
    fixed = Settings("x", own_settings=False).request(sampler("lcm-timesteps"), MemberDefaults(timesteps=(999, 499)))
    assert fixed.steps == 2, "fixed timesteps whatever the slider says"
    teacher = Settings("x", teacher_steps=30).request(sampler("teacher"))
    assert (teacher.steps, teacher.guidance_scale) == (30, 5.0)
    with pytest.raises(InputError, match="own settings must be true or false"):
        parse_settings("x", own_settings="yes")


def test_the_cli_uses_a_members_own_settings_and_says_what_does_not_apply(zoo_family, tmp_path, capsys):
    from PIL import Image

    from rglcd.__main__ import main

    base = ["generate", "--family", zoo_family, "--prompt", "red apple", "--out"]
    assert main([*base, str(tmp_path / "a.png"), "--model", "fixed", "--steps", "8"]) == 0
    err = capsys.readouterr().err
    assert "note: samples at its fixed timesteps [999, 749, 499, 249] (the step setting does not apply)" in err
    assert Image.open(tmp_path / "a.png").size == (64, 64)
    assert main([*base, str(tmp_path / "b.png"), "--model", "lcm", "--steps", "2"]) == 0
    assert "note: guidance 5 is embedded in the UNet as w = 4" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "c.png"), "--model", "lcm", "--eta", "0.3"]) == 2
    assert capsys.readouterr().err == "error: eta applies to the kinds that take one, not to lcm (kind lcm)\n"
    assert main([*base, str(tmp_path / "d.png"), "--model", "tcd-unguided", "--eta", "1.5"]) == 2
    assert "error: eta must be a number between 0 and 1, got '1.5'" in capsys.readouterr().err


def test_the_evaluator_runs_a_fixed_timestep_member_once_at_its_own_settings(zoo_family):
    from rglcd.evaluate.generate import generate_images
    from rglcd.evaluate.harness import EvalConfig, plan_runs
    from rglcd.sampling import sampling_extras

    family = load_family(zoo_family)
    runs = plan_runs(family, EvalConfig(family=zoo_family, models=("lcm", "fixed", "ddim-trailing"), steps=(1, 2)))
    assert [(r.model, r.kind, r.steps, r.guidance) for r in runs] == [
        ("lcm", "lcm", 1, 5.0), ("lcm", "lcm", 2, 5.0), ("fixed", "lcm-timesteps", 4, 5.0),
        ("ddim-trailing", "ddim-trailing", 1, 3.0), ("ddim-trailing", "ddim-trailing", 2, 3.0)]
    given = plan_runs(family, EvalConfig(family=zoo_family, models=("ddim-trailing",), steps=(2,), guidance=1.5))
    assert [r.guidance for r in given] == [1.5]
    pipe = family.pipeline("fixed")
    out = generate_images(pipe, PROMPTS, 1, 1.0, 0, **sampling_extras(family, "fixed", pipe))
    assert out["images"].shape == (2, 3, 64, 64) and out["nfe"] == 4
