"""DynaQuantConfig: serialisation and validation with errors that name the field; keys of earlier
versions; the training schedule that moved to the training config."""

from __future__ import annotations

import pytest

from dynaquant_brevitas import DynaQuantConfig, TrainConfig
from dynaquant_brevitas.training import QuantSection


def test_round_trips_through_dict_and_yaml():
    cfg = DynaQuantConfig(candidate_bits=(10, 6, 8), rounding="ste", float_modules=("h_s.*",))
    assert cfg.candidate_bits == (6, 8, 10)
    assert DynaQuantConfig.from_dict(cfg.to_dict()) == cfg
    assert DynaQuantConfig.from_yaml(cfg.to_yaml()) == cfg
    assert DynaQuantConfig.from_yaml("") == DynaQuantConfig()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"candidate_bits": ()}, "candidate_bits"),
        ({"candidate_bits": (1, 8)}, "candidate_bits"),
        ({"candidate_bits": (8, 17)}, "candidate_bits"),
        ({"candidate_bits": (6.5,)}, "candidate_bits"),
        ({"fixed_bits": 1}, "fixed_bits"),
        ({"fixed_bits": 32}, "fixed_bits"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"rounding": "magic"}, "rounding"),
        ({"calibration_batches": -1}, "calibration_batches"),
        ({"selector_dropout": 1.0}, "selector_dropout"),
        ({"unsupported": "ignore"}, "unsupported"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        DynaQuantConfig(**changes)


def test_unknown_keys_and_non_mappings_are_refused():
    with pytest.raises(ValueError, match="bitz"):
        DynaQuantConfig.from_dict({"bitz": [4, 8]})
    with pytest.raises(ValueError, match="mapping"):
        DynaQuantConfig.from_yaml("- 4\n- 8\n")


def test_renamed_keys_of_earlier_versions_load_with_a_warning():
    with pytest.warns(FutureWarning, match="'estimator' is now called 'rounding'"):
        cfg = DynaQuantConfig.from_dict({"estimator": "ste", "learn_scale": False, "calibration_steps": 3})
    assert (cfg.rounding, cfg.learn_range, cfg.calibration_batches) == ("ste", False, 3)


def test_training_settings_of_earlier_configs_move_to_the_training_config():
    old = {"quant": {"calibration_batches": 2, "config": {"candidate_bits": [4, 8], "gamma": 0.1, "target_bits": 6.0}}}
    with pytest.warns(FutureWarning, match="quant.config.target_bits is now quant.target_bits"):
        cfg = TrainConfig.from_dict(old)
    assert (cfg.quant.gamma, cfg.quant.target_bits) == (0.1, 6.0)
    assert cfg.dynaquant_config().calibration_batches == 2
    with pytest.warns(FutureWarning, match="training settings"):
        assert DynaQuantConfig.from_dict({"gamma": 0.5}) == DynaQuantConfig()


@pytest.mark.parametrize(
    "quant, field",
    [
        ({"config": {"candidate_bits": [6, 8]}, "target_bits": 9.0}, "target_bits"),
        ({"config": {"candidate_bits": [6, 8]}, "target_bits": 3.0}, "target_bits"),
        ({"target_bits": 6.0}, "target_bits"),
        ({"gamma": -0.1}, "gamma"),
        ({"tau_start": 0.0}, "tau_start"),
        ({"tau_decay_steps": 0}, "tau_decay_steps"),
    ],
)
def test_invalid_training_schedules_name_the_field(quant, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_dict({"quant": quant})


def test_temperature_schedule_decays_to_its_end_value():
    cfg = QuantSection(tau_start=4.0, tau_end=0.25, tau_decay_steps=10)
    assert cfg.temperature(0) == 4.0
    assert cfg.temperature(10) == pytest.approx(0.25) and cfg.temperature(1000) == pytest.approx(0.25)
    assert cfg.temperature(0) > cfg.temperature(5) > cfg.temperature(10)
