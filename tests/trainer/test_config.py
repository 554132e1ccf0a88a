"""The train settings' schema: every layer validated once, errors in one line naming the setting
and where it came from, the CLI exiting 2 for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gnn_ooc.tools.cli import main
from gnn_ooc.trainer.config import ConfigError, TrainConfig, cli_fields


def resolve(**flags: object) -> TrainConfig:
    return TrainConfig.resolve({"dataset": "d"}, flags)


def test_values_are_coerced_from_text_like_flags_give_them() -> None:
    cfg = resolve(epochs="3", lr="0.01", fanouts="15, 10,5", memory_budget="512M", progress="no",
                  gpu_cache="1.5GiB", plan=2024)
    assert (cfg.epochs, cfg.lr, cfg.fanouts, cfg.progress) == (3, 0.01, (15, 10, 5), False)
    assert (cfg.memory_budget, cfg.gpu_cache, cfg.plan) == (512 << 20, 3 << 29, "2024")
    assert resolve(fanouts=[-1, 4]).fanouts == (-1, 4) and resolve(fanouts=7).fanouts == (7,)


@pytest.mark.parametrize(("flags", "message"), [
    ({"epochs": "ten"}, "flags: epochs: 'ten': .*integer"),
    ({"epochs": 2.5}, "flags: epochs: 2.5: .*integer"),
    ({"epochs": True}, "flags: epochs: True: .*boolean"),
    ({"epochs": 0}, "flags: epochs: 0: .*greater than or equal to 1"),
    ({"eval_every": -1}, "flags: eval_every: -1: .*greater than or equal to 0"),
    ({"dropout": 1.0}, "flags: dropout: 1.0: .*less than 1"),
    ({"lr": 0}, "flags: lr: 0: .*greater than 0"),
    ({"mode": "disk"}, "flags: mode: 'disk': .*'offline'"),
    ({"fanouts": "10,0"}, "flags: fanouts: '10,0': expected positive counts or -1"),
    ({"fanouts": "10,x"}, "flags: fanouts: '10,x': .*integer"),
    ({"memory_budget": "4Q"}, "flags: memory_budget: '4Q': .*not a size"),
    ({"progress": "maybe"}, "flags: progress: 'maybe': .*boolean"),
    ({"cache": "future", "mode": "online"}, "cache: future follows a plan"),
    ({"eval_fanouts": "5"}, "eval_fanouts: 1 hops, the model has 2"),
    ({"lr_rate": 1}, "flags: unknown setting 'lr_rate'"),
])
def test_a_bad_setting_is_one_line_naming_it(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as bad:
        resolve(**flags)
    assert "\n" not in str(bad.value) and bad.value.exit_code == 2


def test_errors_name_the_layer_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run.yaml: batch_size: 'big'"):
        TrainConfig.resolve({"dataset": "d", "batch_size": "big"}, {"epochs": 2}, source="run.yaml")
    # a flag overriding the file's bad value wins, and is what gets checked
    assert TrainConfig.resolve({"dataset": "d", "batch_size": "big"}, {"batch_size": 64}).batch_size == 64
    with pytest.raises(ConfigError, match="dataset: required"):
        TrainConfig.resolve({}, {"epochs": 2})


def test_the_frozen_config_round_trips_and_replace_validates(tmp_path: Path) -> None:
    cfg = resolve(fanouts="4,3", memory_budget="1G", cache="future")
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == cfg
    with pytest.raises(ValidationError, match="frozen"):
        cfg.epochs = 3  # type: ignore[misc]
    assert cfg.replace(epochs=5).epochs == 5 and cfg.epochs == 10
    with pytest.raises(ConfigError, match="epochs"):
        cfg.replace(epochs=-5)


def test_every_setting_is_a_cli_flag_with_its_help() -> None:
    settings = {s.name: s for s in cli_fields()}
    assert set(settings) == set(TrainConfig.model_fields) - {"dataset"}
    assert settings["progress"].is_flag and not settings["epochs"].is_flag
    assert all(s.help for s in settings.values())


def test_cli_bad_train_settings_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path), "--epochs", "ten"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs: 'ten'" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    config = tmp_path / "run.yaml"
    config.write_text("mode: disk\n")
    assert main(["train", str(tmp_path), "--config", str(config)]) == 2
    assert f"{config}: mode: 'disk'" in capsys.readouterr().err
