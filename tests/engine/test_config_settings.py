"""Config access: YAML is the one source of defaults, so a missing key fails with its full name."""

from dataclasses import dataclass

import pytest
from yaml_defaults import composed

from data_pipelines.registry import UnknownNameError, lookup
from pretrain.engine.config import MissingSettingError, config_hash, from_settings, plain, settings


@dataclass(frozen=True)
class Pair:
    first: int
    second: int


def test_a_missing_key_names_its_full_path():
    config = settings({"trainer": {"max_steps": 3}})
    with pytest.raises(MissingSettingError, match=r"config key trainer\.precision is not set"):
        config["trainer"]["precision"]


def test_dataclass_sections_name_missing_and_unknown_keys():
    assert from_settings(Pair, {"first": 1}, "pair", second=2) == Pair(1, 2)
    with pytest.raises(MissingSettingError, match=r"pair\.second are not set"):
        from_settings(Pair, {"first": 1}, "pair")
    with pytest.raises(MissingSettingError, match=r"pair\.third are not options of pair; its options: first, second"):
        from_settings(Pair, {"first": 1, "second": 2, "third": 3}, "pair")


def test_settings_hash_and_serialize_like_the_plain_config():
    config = composed("pretrain")
    wrapped = settings(config)
    assert config_hash(wrapped) == config_hash(config) and plain(wrapped) == config
    assert type(plain(wrapped)["trainer"]) is dict


def test_every_unknown_name_error_lists_the_valid_names_sorted():
    with pytest.raises(UnknownNameError, match="unknown colour 'teal'; choose one of: blue, red") as error:
        lookup({"red": 1, "blue": 2}, "teal", "colour")
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
