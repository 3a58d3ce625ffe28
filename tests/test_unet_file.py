"""Bare UNet weights files (SDXL-Lightning's `sdxl_lightning_4step_unet.safetensors`, DMD2's
`dmd2_sdxl_4step_unet_fp16.bin`): one file of diffusers-keyed tensors loaded into the teacher's UNet config, on the
real emoji-64 family's teacher written in that layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rglcd.inputs import member_request
from rglcd.models import ModelLoadError, load_family, relocated_spec
from rglcd.sampling import generate


def changed_weights(seed: int) -> dict[str, torch.Tensor]:
    """The emoji-64 teacher's state dict with every tensor moved by seeded noise (so that a load that kept the
    teacher's own weights fails the comparison)."""
    g = torch.Generator().manual_seed(seed)
    state = load_family("emoji-64").unet("teacher").state_dict()
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def file_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """emoji-64 plus a "repository" folder holding two bare UNet files, a safetensors one and an fp16 torch
    pickle, and members reading each."""
    root = tmp_path_factory.mktemp("unet-file")
    repo = root / "repo"
    repo.mkdir()
    weights = changed_weights(0)
    save_file(weights, str(repo / "sdxl_lightning_4step_unet.safetensors"))
    torch.save({k: v.half() for k, v in weights.items()}, repo / "dmd2_sdxl_4step_unet_fp16.bin")
    torch.save({"not": "tensors"}, repo / "odd.bin")
    save_file({"conv_in.weight": torch.zeros(1)}, str(repo / "shape.safetensors"))
    save_file({"conv_in.weight": weights["conv_in.weight"]}, str(repo / "other.safetensors"))
    spec = relocated_spec(load_family("emoji-64"), root)
    for name, file, kind in (("lightning", "sdxl_lightning_4step_unet.safetensors", "euler-trailing"),
                             ("dmd2", "dmd2_sdxl_4step_unet_fp16.bin", "lcm-timesteps"),
                             ("odd", "odd.bin", "lcm"), ("other", "other.safetensors", "lcm"),
                             ("shape", "shape.safetensors", "lcm"),
                             ("absent", "absent.safetensors", "lcm"), ("text", "notes.txt", "lcm")):
        spec["members"][name] = {"unet": {"path": "repo", "file": file}, "kind": kind}
    spec["members"]["dmd2"]["timesteps"] = [999, 749, 499, 249]
    (root / "family.json").write_text(json.dumps(spec))
    return root, weights


def test_a_bare_safetensors_unet_loads_into_the_teachers_config(file_family):
    root, weights = file_family
    family = load_family(str(root))
    unet = family.unet("lightning")
    teacher = family.unet("teacher").config
    assert {k: v for k, v in unet.config.items() if k != "_name_or_path"} == {
        k: v for k, v in teacher.items() if k != "_name_or_path"}
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in weights.items())
    images = generate(family, "lightning", member_request(family, "lightning", "red apple", steps=2))
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_a_bare_torch_pickle_loads_with_weights_only(file_family):
    root, weights = file_family
    unet = load_family(str(root)).unet("dmd2")
    assert all(torch.equal(unet.state_dict()[k], v.half().float()) for k, v in weights.items())
    half = load_family(str(root), dtype=torch.float16).unet("dmd2")
    assert next(half.parameters()).dtype == torch.float16


@pytest.mark.parametrize("member, message", [
    ("odd", "does not hold a state dict of tensors"),
    ("other", "other.safetensors does not fit the teacher's UNet config: missing"),
    ("shape", "shape.safetensors does not fit the teacher's UNet config: size mismatch for conv_in.weight"),
    ("absent", "weights file not found: .*absent.safetensors"),
    ("text", "notes.txt: a weights file must end in .safetensors, .bin"),
])
def test_a_bad_bare_unet_file_is_one_clear_error(file_family, member, message):
    with pytest.raises(ModelLoadError, match=message):
        load_family(str(file_family[0])).unet(member)
