"""The presets against the recorded hub manifests (tests/manifests/: one per repository, ids, revisions and file
paths typed there from the hub's listings, each fact with its source): every file a preset member reads is one its
repository's manifest records, and a wrong file name, id or revision in a preset fails."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rglcd.presets import PRESETS
from rglcd.rewards.clip import HPS_FILE, HPS_REPO, VIT_H_14
from rglcd.space import hub_files
from tests.hub_layouts import LAYOUTS, manifest_files, manifests

HUB_PRESETS = sorted(name for name, spec in PRESETS.items() if "file" not in spec)


def recorded() -> dict[tuple[str, str | None], set[str]]:
    """(repo, pinned revision or None) -> the file paths its manifest records."""
    return {(m["repo"], m.get("revision")): set(manifest_files(m)) for m in manifests()}


def unrecorded(spec: dict[str, Any]) -> list[str]:
    """What a family spec reads from the hub that no manifest records: "repo@revision" or "repo@revision: path"."""
    known = recorded()
    missing = []
    for (repo, revision), files in hub_files(spec).items():
        where = f"{repo}@{revision or 'main'}"
        if (repo, revision) not in known:
            missing.append(where)
        elif files is None:
            missing.append(f"{where}: read whole")
        else:
            missing += [f"{where}: {f}" for f in files if f not in known[(repo, revision)]]
    return missing


def test_every_manifest_says_where_each_fact_came_from():
    found = manifests()
    assert len({m["repo"] for m in found}) == len(found) >= 16
    for m in found:
        assert m["repo"].count("/") == 1 and m["layout"] in LAYOUTS, m["repo"]
        assert m["files"] and all(f["path"] and "size" in f for f in m["files"]), m["repo"]
        assert m["facts"] and all(f["fact"] and f["source"] for f in m["facts"]), m["repo"]
        assert m.get("revision") is None or len(m["revision"]) == 40, m["repo"]


@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_every_file_a_preset_member_reads_is_recorded(preset):
    spec = PRESETS[preset]
    for name in spec["members"]:
        assert not unrecorded({**spec, "members": {name: spec["members"][name]}}), name
    assert not unrecorded(spec)


def test_the_rewards_files_are_recorded():
    assert HPS_FILE in recorded()[(HPS_REPO, None)] and "config.json" in recorded()[(VIT_H_14, None)]


def test_the_zoo_is_in_the_presets_with_its_authors_samplers():
    sdxl, base = PRESETS["sdxl"]["members"], PRESETS["sd21-base"]["members"]
    kinds = {name: (m["kind"], m.get("steps"), m.get("timesteps")) for name, m in sdxl.items()}
    assert kinds["tcd"] == ("tcd", 4, None) and sdxl["tcd"]["eta"] == 0.3
    assert [kinds[f"pcm-{n}step"] for n in (2, 4, 8)] == [("tcd", 2, None), ("tcd", 4, None), ("tcd", 8, None)]
    assert all(sdxl[f"pcm-{n}step"]["eta"] == 0.0 for n in (2, 4, 8))  # the demo's pipeline default reaches step
    assert kinds["hyper-sd-4step-lora"] == ("ddim-trailing", 4, None)
    assert kinds["hyper-sd-1step-unet"] == ("lcm-timesteps", None, [800])
    assert kinds["lightning-4step-unet"] == kinds["lightning-4step-lora"] == ("euler-trailing", 4, None)
    assert kinds["dmd2"] == ("lcm-timesteps", None, [999, 749, 499, 249])
    assert sdxl["dmd2"]["licence"].startswith("CC BY-NC 4.0")
    ours = ("teacher", "lcm", "lcm-lora", "mlcm")
    assert all(m.get("guidance") == 1.0 for name, m in sdxl.items() if name not in ours)
    assert base["rg-lcm"]["unet"] == {"repo": "jiachenli-ucsb/RG-LCM-SD-2.1-base-512-HPSv2.1"}
    assert base["tcd"]["lora"]["repo"] == "h1t/TCD-SD21-base-LoRA"
    assert PRESETS["sdxl"]["columns"] == ["teacher", "lcm", "lcm-lora", "mlcm"]


def mutated(preset: str, path: tuple, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(PRESETS[preset])
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return spec


@pytest.mark.parametrize("preset, path, value, message", [
    ("sdxl", ("members", "lightning-4step-unet", "unet", "file"), "sdxl_lightning_4step_unet.safetensor",
     "ByteDance/SDXL-Lightning@main: sdxl_lightning_4step_unet.safetensor"),
    ("sdxl", ("members", "pcm-2step", "lora", "subfolder"), "sdxl_lora",
     "wangfuyun/PCM_Weights@main: sdxl_lora/pcm_sdxl_smallcfg_2step_converted.safetensors"),
    ("sdxl", ("members", "dmd2", "unet", "file"), "dmd2_sdxl_4step_unet.bin",
     "tianweiy/DMD2@main: dmd2_sdxl_4step_unet.bin"),
    ("sdxl", ("members", "tcd", "lora", "repo"), "h1t/TCD-SDXL-Lora", "h1t/TCD-SDXL-Lora@main"),
    ("sdxl", ("members", "mlcm", "lora", "revision"), "45e663a" + "0" * 33, "OPPOer/TLCM@45e663a"),
    ("sd21-base", ("members", "rg-lcm", "unet", "subfolder"), "unet",
     "jiachenli-ucsb/RG-LCM-SD-2.1-base-512-HPSv2.1@main: unet/config.json"),
])
def test_a_wrong_name_in_a_preset_fails_against_the_manifests(preset, path, value, message):
    missing = unrecorded(mutated(preset, path, value))
    assert any(m.startswith(message) for m in missing), missing
