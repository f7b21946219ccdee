"""Where ``appliance hsm`` takes its PINs from: a file, the environment, a prompt; never argv."""

from __future__ import annotations

import argparse

import pytest

from appliance.hsm.cli import Pins


def _pins(tmp_path, env=None, typed=None, pin_file=None, new_pin_file=None):
    asked = []

    def prompt(text):
        asked.append(text)
        return None if typed is None else typed.pop(0)

    args = argparse.Namespace(pin_file=pin_file, new_pin_file=new_pin_file)
    return Pins(args, env=env or {}, prompt=prompt), asked


def test_the_file_then_the_environment_then_the_prompt(tmp_path):
    f = tmp_path / "pin"
    f.write_text("  24681357  \nignored\n")
    pins, asked = _pins(tmp_path, {"APPLIANCE_HSM_PIN": "env"}, ["typed"], pin_file=str(f))
    assert pins.pin() == "24681357" and asked == []
    pins, asked = _pins(tmp_path, {"APPLIANCE_HSM_PIN": "13572468"}, ["typed"])
    assert pins.pin() == "13572468" and asked == []
    pins, asked = _pins(tmp_path, {}, ["11335577"])
    assert pins.pin() == "11335577" and pins.pin() == "11335577"
    assert asked == ["crypto module PIN: "]  # asked once


def test_without_a_source_the_error_names_them(tmp_path):
    pins, _ = _pins(tmp_path)
    with pytest.raises(ValueError, match="--pin-file or APPLIANCE_HSM_PIN"):
        pins.pin()
    with pytest.raises(ValueError, match="--new-pin-file or APPLIANCE_HSM_NEW_PIN"):
        pins.new_pin()


def test_a_bad_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="first line is empty"):
        _pins(tmp_path, pin_file=str(empty))[0].pin()
    with pytest.raises(ValueError, match="cannot read"):
        _pins(tmp_path, pin_file=str(tmp_path / "absent"))[0].pin()


def test_the_new_pin_is_typed_twice(tmp_path):
    pins, asked = _pins(tmp_path, typed=["24680135", "24680135"])
    assert pins.new_pin() == "24680135" and len(asked) == 2
    pins, _ = _pins(tmp_path, typed=["24680135", "24680136"])
    with pytest.raises(ValueError, match="differ"):
        pins.new_pin()
    pins, _ = _pins(tmp_path, typed=[""])
    with pytest.raises(ValueError, match="no PIN given"):
        pins.pin()
    pins, _ = _pins(tmp_path, {"APPLIANCE_HSM_NEW_PIN": "97531864"})
    assert pins.new_pin() == "97531864"
