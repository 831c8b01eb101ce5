"""Dataset loaders on generated trees: valid layouts load, each bad input fails with its message."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from logicad.data import DatasetError, load_defects, load_split, sample_regions, scan
from logicad.data.images import read_image_rgb


def test_loco_splits_carry_labels_kinds_and_masks(small_loco, category):
    train = load_split("mvtec_loco", small_loco, category, "train", 64)
    test = load_split("mvtec_loco", small_loco, category, "test", 64)
    assert len(train) == 6 and set(s.kind for s in train.samples) == {"good"}
    assert {s.kind for s in test.samples} == {"good", "logical", "structural"}
    item = test[len(test) - 1]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"] == 1 and item["kind"] == "structural"
    assert item["mask"].shape == (64, 64) and item["mask"].max() > 0
    assert tuple(item["orig_size"].tolist()) == read_image_rgb(Path(item["path"])).shape[:2]
    good = test[0]
    assert good["label"] == 0 and good["mask"].max() == 0


def test_loco_regions_come_one_per_mask_with_saturation(small_loco, category):
    defects = load_defects("mvtec_loco", small_loco, category)
    anomalous = [s for s in scan("mvtec_loco", small_loco, category, "test") if s.label == 1]
    for sample in anomalous:
        regions = sample_regions(sample, defects)
        assert len(regions) >= 1
        for region in regions:
            assert region.mask.shape == read_image_rgb(sample.path).shape[:2]
            assert 0 < region.saturation_area
            assert region.defect_name in {d.name for d in defects.values()}


def test_images_are_decoded_once_and_served_from_memory(loco_copy, category):
    train = load_split("mvtec_loco", loco_copy, category, "train", 32)
    shutil.rmtree(loco_copy / category / "train")
    assert train[0]["image"].shape == (3, 32, 32)


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    Image.fromarray(np.full((10, 12), 7, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.full((10, 12, 4), 9, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    for name in ("gray.png", "rgba.png"):
        image = read_image_rgb(tmp_path / name)
        assert image.shape == (10, 12, 3) and image.dtype == np.uint8


def _error(fn, *args) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root_names_the_path_and_layout(tmp_path):
    message = _error(scan, "mvtec_loco", tmp_path / "nope", "x", "train")
    assert str(tmp_path / "nope") in message and "train/good" in message


def test_missing_category_lists_the_categories_found(small_loco, category):
    message = _error(scan, "mvtec_loco", small_loco, "no_such_category", "train")
    assert "no_such_category" in message and category in message


def test_empty_split_is_refused(loco_copy, category):
    for image in (loco_copy / category / "validation" / "good").iterdir():
        image.unlink()
    message = _error(scan, "mvtec_loco", loco_copy, category, "validation")
    assert "validation/good" in message and "empty" in message


def test_mask_folder_without_image_is_refused(loco_copy, category):
    (loco_copy / category / "test" / "logical_anomalies" / "000.png").unlink()
    message = _error(scan, "mvtec_loco", loco_copy, category, "test")
    assert "ground_truth/logical_anomalies/000" in message and "without an image" in message


def test_anomalous_image_without_mask_is_refused(loco_copy, category):
    shutil.rmtree(loco_copy / category / "ground_truth" / "structural_anomalies" / "001")
    message = _error(scan, "mvtec_loco", loco_copy, category, "test")
    assert "structural_anomalies/001.png" in message and "without ground truth" in message


def test_corrupt_image_is_refused_before_training(loco_copy, category):
    (loco_copy / category / "train" / "good" / "002.png").write_bytes(b"not a png at all")
    message = _error(load_split, "mvtec_loco", loco_copy, category, "train", 32)
    assert "train/good/002.png" in message and "corrupt" in message


def test_mask_value_absent_from_defects_config_is_refused(loco_copy, category):
    mask_path = loco_copy / category / "ground_truth" / "logical_anomalies" / "000" / "000.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[mask > 0] = 77
    Image.fromarray(mask).save(mask_path)
    message = _error(load_split, "mvtec_loco", loco_copy, category, "test", 32)
    assert str(mask_path) in message and "[77]" in message and "defects_config.json" in message


def test_mask_of_another_size_than_its_image_is_refused(loco_copy, category):
    mask_path = loco_copy / category / "ground_truth" / "structural_anomalies" / "000" / "000.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask_path)
    message = _error(load_split, "mvtec_loco", loco_copy, category, "test", 32)
    assert str(mask_path) in message and "image's size" in message


def test_missing_defects_config_is_refused(loco_copy, category):
    (loco_copy / category / "defects_config.json").unlink()
    message = _error(load_split, "mvtec_loco", loco_copy, category, "test", 32)
    assert "defects_config.json" in message


def _mvtec_ad_tree(root: Path) -> Path:
    cat = root / "bottle"
    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 10), ("test/good", 2), ("test/crack", 2)):
        (cat / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(cat / folder / f"{i:03d}.png")
    (cat / "ground_truth" / "crack").mkdir(parents=True)
    for i in range(2):
        mask = np.zeros((20, 24), np.uint8)
        mask[5:9, 6:12] = 255
        Image.fromarray(mask).save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def test_mvtec_ad_layout_holds_out_validation_and_reads_binary_masks(tmp_path):
    root = _mvtec_ad_tree(tmp_path)
    train, val = scan("mvtec_ad", root, "bottle", "train"), scan("mvtec_ad", root, "bottle", "validation")
    assert len(train) == 9 and len(val) == 1 and not {s.path for s in train} & {s.path for s in val}
    test = load_split("mvtec_ad", root, "bottle", "test", 16)
    kinds = [s.kind for s in test.samples]
    assert kinds.count("structural") == 2 and kinds.count("good") == 2
    (region,) = sample_regions(test.samples[0], None)
    assert region.mask.sum() == 24 and region.saturation_area == 24


def test_mvtec_ad_anomaly_without_mask_is_refused(tmp_path):
    root = _mvtec_ad_tree(tmp_path)
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    message = _error(scan, "mvtec_ad", root, "bottle", "test")
    assert "001_mask.png" in message


def test_plain_folder_trains_but_has_no_test_split(tmp_path):
    for i in range(5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.jpg")
    assert len(scan("folder", tmp_path, None, "train")) == 4
    assert len(scan("folder", tmp_path, None, "validation")) == 1
    assert "no test split" in _error(scan, "folder", tmp_path, None, "test")
