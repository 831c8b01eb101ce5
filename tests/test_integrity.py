"""Every image is decoded before Ray starts, once per dataset fingerprint; a truncated file
fails in one line naming it."""

from __future__ import annotations

import pytest

from logicad.data import DatasetError, scan
from logicad.data.integrity import verify_decodable
from logicad.pipelines.cli import main


def _samples(root, category):
    return [s for split in ("train", "validation", "test") for s in scan("mvtec_loco", root, category, split)]


def test_a_verified_dataset_is_not_decoded_again_until_it_changes(loco_copy, category, tmp_path):
    samples = _samples(loco_copy, category)
    first = verify_decodable(samples, loco_copy, tmp_path / "markers")
    assert first >= len(samples) and verify_decodable(samples, loco_copy, tmp_path / "markers") == 0
    image = samples[0].path
    image.write_bytes(image.read_bytes())  # touched: a new fingerprint
    assert verify_decodable(samples, loco_copy, tmp_path / "markers") == first


def test_a_truncated_training_image_fails_in_one_line_naming_it(loco_copy, category, tmp_path):
    bad = sorted((loco_copy / category / "train" / "good").glob("*.png"))[2]
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DatasetError) as err:
        verify_decodable(_samples(loco_copy, category), loco_copy, tmp_path / "markers")
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(bad)) and "expected a complete" in message
    assert not (tmp_path / "markers").exists()


def test_train_on_a_truncated_image_fails_before_ray_starts(loco_copy, category, tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setenv("LOGICAD_CACHE", str(tmp_path / "cache"))
    bad = sorted((loco_copy / category / "validation" / "good").glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    code = main(["train", "--data", str(loco_copy), "--category", category, "--output", str(tmp_path / "o"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(bad) in err and not ray.is_initialized()
