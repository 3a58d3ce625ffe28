"""Trainer flags: dataclass fields, YAML recipes, command-line overrides, clear errors."""

from pathlib import Path

import pytest

from rglcd.training.cli_args import parse_config, requested_method
from rglcd.training.distill import DistillConfig
from rglcd.training.ict import ICTConfig
from rglcd.training.teacher import TeacherConfig

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


def test_recipe_then_flags_override():
    cfg = parse_config(DistillConfig, argv=["--config", str(CONFIGS / "emoji-64-lcd-lora.yaml"), "--max-steps", "7",
                                            "--export-dir", "none"])
    assert cfg.lora.lora_rank == 16 and cfg.member == "lcm-lora" and cfg.optim.max_steps == 7 and cfg.export_dir is None


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("emoji-64-*.yaml")))
def test_every_recipe_parses(recipe):
    method = requested_method(["--config", str(recipe)])
    cls = TeacherConfig if "teacher" in recipe.name else ICTConfig if method == "ict" else DistillConfig
    cfg = parse_config(cls, argv=["--config", str(recipe)])
    assert cfg.family == "emoji-64"


def test_tuple_and_boolean_flags():
    cfg = parse_config(TeacherConfig, argv=["--block-out-channels", "16", "32", "--include-flags", "true"])
    assert cfg.block_out_channels == (16, 32) and cfg.include_flags is True
    assert parse_config(TeacherConfig, argv=["--replace-shipped"]).replace_shipped is True
    assert parse_config(TeacherConfig, argv=["--replace-shipped", "false"]).replace_shipped is False
    assert parse_config(TeacherConfig, argv=[]).replace_shipped is False


def test_optional_settings_a_recipe_gave_can_be_cleared_with_none(capsys):
    teacher = str(CONFIGS / "emoji-64-teacher.yaml")
    assert parse_config(TeacherConfig, argv=["--config", teacher]).phrasings == 4
    assert parse_config(TeacherConfig, argv=["--config", teacher, "--phrasings", "none"]).phrasings is None
    assert parse_config(TeacherConfig, argv=["--config", teacher, "--phrasings", "12"]).phrasings == 12
    with pytest.raises(SystemExit):
        parse_config(TeacherConfig, argv=["--phrasings", "many"])
    assert "argument --phrasings: invalid int value: 'many'" in capsys.readouterr().err


def test_list_settings_can_be_cleared_with_none():
    cfg = parse_config(DistillConfig, argv=["--progressive", "8", "4", "2"])
    assert cfg.mlcm.progressive == (8, 4, 2)
    assert parse_config(DistillConfig, argv=["--progressive", "none"]).mlcm.progressive is None


def _trainer_configs() -> set[type]:
    """Every config class a trainer parses: the method trainers' (rglcd.training.trainers) and every dataclass an
    entry point in train/ imports."""
    import dataclasses
    import importlib.util

    from rglcd.training.trainers import TRAINERS

    found = {entry.config for entry in TRAINERS.values()}
    for script in sorted((CONFIGS.parent).glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"train_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # the scripts run only under __main__
        found |= {v for v in vars(module).values() if isinstance(v, type) and dataclasses.is_dataclass(v)}
    return found


def test_every_setting_of_every_trainer_says_what_it_means():
    from rglcd.training.settings import help_text, sections

    configs = _trainer_configs()
    assert {"DistillConfig", "ICTConfig", "TeacherConfig", "AutoencoderConfig", "RewardConfig",
            "ClassifierConfig"} <= {c.__name__ for c in configs}
    missing = [f"{cls.__name__}.{f.name}" for cls in configs for _, _, fields in sections(cls) for f in fields
               if not (help_text(f) or "").strip()]
    assert not missing, f"settings without a meaning for --help: {', '.join(sorted(missing))}"
