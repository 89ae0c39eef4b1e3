"""DynaQuantConfig: serialisation and validation with errors that name the field."""

from __future__ import annotations

import pytest

from dynaquant_brevitas import DynaQuantConfig


def test_round_trips_through_dict_and_yaml():
    cfg = DynaQuantConfig(candidate_bits=(10, 6, 8), gamma=0.02, target_bits=7.0, float_modules=("h_s.*",))
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
        ({"target_bits": 9.0}, "target_bits"),
        ({"target_bits": 3.0}, "target_bits"),
        ({"gamma": -0.1}, "gamma"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"estimator": "magic"}, "estimator"),
        ({"tau_start": 0.0}, "tau_start"),
        ({"tau_decay_steps": 0}, "tau_decay_steps"),
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


def test_temperature_schedule_decays_to_its_end_value():
    cfg = DynaQuantConfig(tau_start=4.0, tau_end=0.25, tau_decay_steps=10)
    assert cfg.temperature(0) == 4.0
    assert cfg.temperature(10) == pytest.approx(0.25) and cfg.temperature(1000) == pytest.approx(0.25)
    assert cfg.temperature(0) > cfg.temperature(5) > cfg.temperature(10)
