"""Synthetic anomalies for tuning: Perlin masks, structural and logical anomalies, the seeded set."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from logicad.data import AnomalyDataset, Sample, load_split
from logicad.data.anomaly_synthesis import (
    OBJECT_MODES,
    REGION_MODES,
    SyntheticAnomalySet,
    logical_anomaly,
    logical_modes_for,
    object_masks,
    perlin_mask,
    perlin_noise,
    structural_anomaly,
    texture_bank,
    whole_objects,
)
from logicad.data.synthetic import SyntheticSpec, make_synthetic

SPEC = SyntheticSpec(size=64, n_train=4, n_validation=4, n_test_good=1, n_test_logical=1, n_test_structural=1)
ITEM_KEYS = {"image", "label", "kind", "kind_id", "mask", "orig_size", "path", "index"}


@pytest.fixture(scope="module")
def normals(tmp_path_factory) -> AnomalyDataset:
    """Four validation normals of the synthetic parts_box at 64 px."""
    root = tmp_path_factory.mktemp("loco")
    make_synthetic(root, SPEC, ["parts_box"])
    return load_split("mvtec_loco", root, "parts_box", "validation", 64)


def _codes(pixels: np.ndarray) -> np.ndarray:
    """One integer per RGB colour, to test colours for membership."""
    pixels = pixels.reshape(-1, 3).astype(np.int64)
    return pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=2)


def test_perlin_noise_is_smooth_and_spans_minus_one_to_one():
    rng = np.random.default_rng(0)
    for scale in (1, 4, 6):
        noise = perlin_noise((64, 80), scale, rng)
        assert noise.shape == (64, 80) and noise.dtype == np.float32
        assert noise.min() >= -1 and noise.max() <= 1 and np.isclose(np.abs(noise).max(), 1)
        across = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
        down = np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]
        assert across > 0.95 and down > 0.95
    assert not np.array_equal(perlin_noise((32, 32), 4, rng), perlin_noise((32, 32), 4, rng))


def test_perlin_masks_are_never_empty_and_cover_a_moderate_fraction():
    rng = np.random.default_rng(1)
    fractions = [perlin_mask((64, 64), rng).mean() for _ in range(100)]
    assert min(fractions) > 0 and max(fractions) <= 0.3 + 1e-3
    assert 0.03 < np.median(fractions) < 0.25
    assert perlin_mask((64, 64), rng, threshold=1.5).any()  # an impossible threshold still marks pixels


def test_texture_bank_gives_cached_square_rgb_textures():
    bank = texture_bank(48)
    assert len(bank) >= 4
    assert all(t.shape == (48, 48, 3) and t.dtype == np.uint8 and not t.flags.writeable for t in bank)
    assert all(a is b for a, b in zip(bank, texture_bank(48)))


@pytest.mark.parametrize("textures", [None, []], ids=["texture-bank", "own-patches-shuffled"])
def test_structural_anomaly_changes_pixels_inside_its_mask_and_none_outside(normals, textures):
    for seed in range(6):
        image = normals.images[seed % len(normals)]
        out, mask = structural_anomaly(image, np.random.default_rng(seed), textures)
        assert out.shape == image.shape and out.dtype == np.uint8 and mask.dtype == bool and mask.any()
        changed = _changed(image, out)
        assert not changed[~mask].any()
        assert changed[mask].mean() > 0.6


@pytest.mark.parametrize("mode", ["misplace", "swap"])
def test_logical_anomaly_changes_only_masked_pixels_with_pixels_of_another_normal(normals, mode):
    image, others = normals.images[0], normals.images[1:]
    other_colors = _codes(np.stack(others))
    for seed in range(6):
        out, mask = logical_anomaly(image, others, np.random.default_rng(seed), mode)
        changed = _changed(image, out)
        assert mask.any() and changed.any() and not changed[~mask].any()
        assert np.isin(_codes(out[changed]), other_colors).all()


def test_logical_remove_fills_a_salient_region_with_the_image_own_background(normals):
    image = normals.images[1]
    for seed in range(6):
        out, mask = logical_anomaly(image, normals.images[2:], np.random.default_rng(seed), "remove")
        changed = _changed(image, out)
        assert changed.any() and not changed[~mask].any()
        assert np.isin(_codes(out[changed]), _codes(image)).all()


def test_logical_anomaly_without_others_uses_the_image_mirrored(normals):
    image = normals.images[0]
    out, mask = logical_anomaly(image, [], np.random.default_rng(0), "swap")
    changed = _changed(image, out)
    assert changed.any() and not changed[~mask].any()
    assert np.isin(_codes(out[changed]), _codes(image)).all()
    with pytest.raises(ValueError, match="unknown logical anomaly mode"):
        logical_anomaly(image, [], np.random.default_rng(0), "teleport")


@pytest.fixture(scope="module")
def bag_normals(tmp_path_factory) -> AnomalyDataset:
    """Validation normals of the synthetic screw_bag (six separate items at random places), 128 px."""
    root = tmp_path_factory.mktemp("bag")
    make_synthetic(root, SyntheticSpec(size=128, n_train=1, n_validation=6, n_test_good=1, n_test_logical=1,
                                       n_test_structural=1), ["screw_bag"])
    return load_split("mvtec_loco", root, "screw_bag", "validation", 128)


def _whole_count(image: np.ndarray) -> int:
    return len(whole_objects(object_masks(image)))


def test_object_masks_find_the_separate_items_of_a_bag_and_none_on_a_plain_image(bag_normals):
    counts = [_whole_count(image) for image in bag_normals.images]
    assert all(5 <= c <= 8 for c in counts), counts  # six items; a washer may split, two may touch
    plain = np.full((128, 128, 3), 120, np.uint8)
    assert object_masks(plain) == [] and logical_modes_for(plain) == REGION_MODES
    assert all(logical_modes_for(image) == OBJECT_MODES for image in bag_normals.images)


def test_add_object_puts_one_whole_object_more_on_free_background_changing_only_its_mask(bag_normals):
    images = bag_normals.images
    for seed in range(6):
        image = images[seed]
        out, mask = logical_anomaly(image, images[:seed] + images[seed + 1:], np.random.default_rng(seed), "add_object")
        assert not _changed(image, out)[~mask].any() and _changed(image, out)[mask].mean() > 0.5
        assert 0.001 < mask.mean() < 0.06
        assert not (np.any(object_masks(image), axis=0) & mask).any()  # on free background: no item under it
        assert np.abs(out[mask].astype(int) - image[mask]).mean() > 15  # an item where there was film


def test_drop_object_paints_one_whole_object_over_with_background(bag_normals):
    images = bag_normals.images
    fewer = 0
    for seed in range(6):
        image = images[seed]
        others = images[:seed] + images[seed + 1:]
        out, mask = logical_anomaly(image, others, np.random.default_rng(seed), "drop_object")
        assert not _changed(image, out)[~mask].any() and mask.any()
        fewer += _whole_count(out) < _whole_count(image)
        assert np.abs(out[mask].astype(int) - np.median(out[~mask & (out.std(axis=2) < 8)], axis=0)).mean() < 40
    assert fewer >= 5


def test_a_bag_s_default_logical_anomalies_are_whole_object_edits(bag_normals):
    ds = SyntheticAnomalySet(bag_normals, seed=0, n_per_kind=12)
    n = len(bag_normals)
    for i in range(12):
        changed = _changed(bag_normals.images[i % n], ds.images[n + i])
        assert changed.any() and not changed[~ds.masks[n + i]].any()
    counts = [_whole_count(ds.images[n + i]) - _whole_count(bag_normals.images[i % n]) for i in range(12)]
    assert {-1, 1} <= set(counts)  # both an item too many and one too few are drawn


def test_set_has_the_expected_counts_labels_kinds_and_paths(normals):
    ds = SyntheticAnomalySet(normals, seed=0)
    n = len(normals)
    assert len(ds) == 3 * n
    assert ds.kinds == ["good"] * n + ["logical"] * n + ["structural"] * n
    assert ds.labels == [0] * n + [1] * 2 * n
    assert str(ds.samples[n + 2].path) == f"{normals.samples[2].path}#synthetic-logical-2"
    cycled = SyntheticAnomalySet(normals, seed=0, n_per_kind=6)
    assert len(cycled) == n + 12 and cycled.kinds.count("structural") == 6
    assert str(cycled.samples[n + 6 + 5].path).endswith(f"{normals.samples[1].path.name}#synthetic-structural-5")
    assert len(SyntheticAnomalySet(normals, n_per_kind=0)) == n


def test_set_items_have_anomaly_dataset_keys_and_shapes(normals):
    ds = SyntheticAnomalySet(normals, seed=0)
    assert set(ds[0]) == set(normals[0]) == ITEM_KEYS
    for index in range(len(ds)):
        item = ds[index]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.long
        assert set(item["mask"].unique().tolist()) <= {0, 1}
        assert item["label"] == int(item["kind"] != "good") and item["index"] == index
        assert item["kind_id"] == {"good": 0, "logical": 1, "structural": 2}[item["kind"]]
        assert (item["mask"].sum() > 0) == (item["label"] == 1)
        assert torch.equal(item["mask"].bool(), torch.from_numpy(ds.masks[index]))
        assert tuple(item["orig_size"].tolist()) == (64, 64)
    assert torch.allclose(ds[1]["image"], normals[1]["image"])


def test_set_is_deterministic_by_seed_and_differs_across_seeds(normals):
    first, again, other = (SyntheticAnomalySet(normals, seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first.images, again.images))
    assert all(np.array_equal(a, b) for a, b in zip(first.masks, again.masks))
    n = len(normals)
    assert not any(np.array_equal(a, b) for a, b in zip(first.images[n:], other.images[n:]))
    longer = SyntheticAnomalySet(normals, seed=3, n_per_kind=6)  # anomaly i depends on (seed, kind, i) only
    assert np.array_equal(longer.images[n + 2], first.images[n + 2])
    assert np.array_equal(longer.images[n + 6 + 3], first.images[n + n + 3])


def test_set_of_one_normal_makes_logical_anomalies_from_the_image_itself(normals):
    single = AnomalyDataset(normals.samples[:1], 64)
    ds = SyntheticAnomalySet(single, seed=0, n_per_kind=3)
    assert len(ds) == 7
    for index in range(1, 7):
        assert ds.masks[index].any()
        assert not _changed(single.images[0], ds.images[index])[~ds.masks[index]].any()


def test_set_rejects_empty_normals_and_negative_seed(normals):
    with pytest.raises(ValueError, match="at least one normal"):
        SyntheticAnomalySet(AnomalyDataset([], 64))
    with pytest.raises(ValueError, match="seed"):
        SyntheticAnomalySet(normals, seed=-1)


def test_set_of_16_normals_at_256_px_is_made_in_under_two_seconds(normals, tmp_path: Path):
    samples = []
    for k in range(16):  # 16 distinct 256 px normals from the 4 generated ones
        image = np.rot90(np.kron(normals.images[k % 4], np.ones((4, 4, 1), np.uint8)), k // 4)
        path = tmp_path / f"{k:03d}.png"
        Image.fromarray(np.ascontiguousarray(image)).save(path)
        samples.append(Sample(path, 0, "good", "good"))
    big = AnomalyDataset(samples, 256)
    texture_bank(256)  # loaded once per process, outside the timed part
    start = time.perf_counter()
    ds = SyntheticAnomalySet(big, seed=0)
    assert time.perf_counter() - start < 2.0
    assert len(ds) == 48 and ds.images[20].shape == (256, 256, 3)
