"""Config keys: paper defaults, presets, --set parsing, and clear failures on bad keys and values."""

from __future__ import annotations

import pytest

from logicad.models.base import ConfigError, method_class
from logicad.pipelines.cli import main
from logicad.pipelines.config import parse_sets, resolve_config


def test_defaults_are_the_papers_settings():
    config = resolve_config("dfsc")
    assert (config.image_size, config.batch_size, config.max_steps) == (256, 1, 70000)
    assert (config.margin, config.alpha, config.quantile, config.ema_momentum) == (1.0, 2.0, 0.999, 0.99)


def test_set_values_are_parsed_to_the_keys_types():
    config = resolve_config("dfsc", ["margin=0.4", "max_steps=12", "dfsc_reduction=element"])
    assert config.margin == 0.4 and config.max_steps == 12 and config.dfsc_reduction == "element"


def test_preset_changes_values_but_not_defaults():
    cls = method_class("dfsc").config_cls
    preset = resolve_config("dfsc", preset="cpu-synthetic")
    assert preset.to_dict() != cls().to_dict() and cls().image_size == 256
    assert resolve_config("dfsc", ["image_size=64"], preset="cpu-synthetic").image_size == 64


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        resolve_config("dfsc", ["margn=1"])
    assert "margn" in str(info.value) and "margin" in str(info.value) and "image_size" in str(info.value)


@pytest.mark.parametrize("item, words", [("margin=abc", "expects float"), ("max_steps=1.5", "expects int"),
                                         ("precision=fp8", "one of"), ("batch_size=0", "> 0"),
                                         ("noequals", "key=value")])
def test_bad_values_name_the_key(item, words):
    with pytest.raises(ConfigError) as info:
        resolve_config("dfsc", [item])
    assert words in str(info.value)


def test_config_file_feeds_the_same_keys(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("method: dfsc\nconfig:\n  margin: 0.2\n  lr: 0.0002\n")
    config = resolve_config("dfsc", ["lr=0.0003"], config_file=path)
    assert config.margin == 0.2 and config.lr == 0.0003


def test_unknown_method_lists_registered_methods():
    with pytest.raises(ConfigError, match="dfsc"):
        method_class("nope")


def test_cli_bad_set_key_fails_with_one_line_before_training(capsys, tmp_path):
    code = main(["train", "--data", str(tmp_path), "--category", "x", "--set", "margn=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "margn" in err and "valid keys" in err


def test_parse_sets_splits_on_the_first_equals():
    assert parse_sets(["a=b=c", " k = v "]) == {"a": "b=c", "k": "v"}


def test_weight_sources_that_are_not_paths_pass_the_path_check_and_missing_files_do_not(tmp_path, monkeypatch):
    from logicad.pipelines.train.driver import check_paths

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for source in ("hub", "random", "imagenet-lite0"):
        check_paths(resolve_config("glcf", [f"backbone_weights={source}", "backbone=tf_efficientnet_lite0"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub offline: refused before any worker starts
    with pytest.raises(ConfigError, match="'backbone_weights'.*not available offline from the timm hub"):
        check_paths(resolve_config("glcf", ["backbone_weights=hub"]))
    with pytest.raises(ConfigError, match="'backbone_weights'.*does not exist"):
        check_paths(resolve_config("glcf", [f"backbone_weights={tmp_path / 'missing.pth'}"]))
