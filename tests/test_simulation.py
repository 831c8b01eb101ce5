"""SLSG's anomaly simulation (logicad.data.simulation): masks, sources, blend, the training-set view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logicad.data import load_split
from logicad.data.errors import DatasetError
from logicad.data.simulation import (
    SimulationOptions, blend, foreground, perlin_anomaly_mask, scaled_min_area, simulate, structural_beta,
)
from logicad.data.transforms import train_transform
from logicad.data.views import training_view


@pytest.fixture(scope="module")
def train_set(small_loco, category):
    return load_split("mvtec_loco", small_loco, category, "train", 64, train_transform())


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


@pytest.mark.parametrize("threshold", [0.4, 0.5, 0.9])
def test_perlin_masks_are_non_empty_inside_the_foreground_and_at_least_the_minimum_area(threshold):
    shape, min_area = (64, 64), 49
    fg = _disc(shape, (20, 40), 12)  # ~450 px of 4096: many draws miss it, forcing redraws/fallback
    for seed in range(40):
        rng = np.random.default_rng(seed)
        mask = perlin_anomaly_mask(shape, rng, threshold, 0, 3, 90.0, min_area, fg)
        assert mask.dtype == bool and mask.shape == shape
        assert mask.sum() >= min_area
        assert not (mask & ~fg).any()


def test_a_foreground_smaller_than_the_minimum_area_is_ignored():
    fg = np.zeros((32, 32), bool)
    fg[0, 0] = True
    mask = perlin_anomaly_mask((32, 32), np.random.default_rng(0), 0.5, 0, 2, 0.0, 49, fg)
    assert mask.sum() >= 49


def test_minimum_area_is_given_at_256_px_and_scales_with_the_area():
    assert scaled_min_area(49, 256) == 49
    assert scaled_min_area(49, 128) == 12
    assert scaled_min_area(49, 16) == 1


def test_threshold_foreground_finds_an_object_on_a_plain_background_and_none_is_everything():
    image = np.full((64, 64, 3), 200, np.uint8)
    image[20:44, 20:44] = (30, 60, 90)
    fg = foreground(image, "threshold")
    assert fg[32, 32] and not fg[2, 2]
    assert foreground(image, "none").all()
    with pytest.raises(ValueError, match="foreground"):
        foreground(image, "per-category-magic")


def test_blend_is_i_times_1_minus_m_plus_1_minus_beta_s_m_plus_beta_i_m():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    source = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = rng.random((16, 16)) < 0.3
    beta = 0.2
    out = blend(image, source, mask, beta)
    m = mask[..., None].astype(np.float64)
    expected = image * (1 - m) + (1 - beta) * source * m + beta * image * m
    np.testing.assert_allclose(out, np.rint(expected), atol=0.5 + 1e-9)
    assert (out[~mask] == image[~mask]).all()
    np.testing.assert_array_equal(blend(image, source, mask, 0.0)[mask], source[mask])


def test_structural_beta_takes_the_fixed_value_with_its_probability():
    rng = np.random.default_rng(0)
    draws = np.array([structural_beta(rng, 0.75, 0.25, 0.9) for _ in range(4000)])
    assert abs((draws == 0.75).mean() - 0.25) < 0.03
    assert draws.min() >= 0 and draws.max() <= 0.9


@pytest.mark.parametrize("p_logical", [0.0, 1.0])
def test_p_logical_picks_the_anomaly_family(p_logical):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    options = SimulationOptions(p_logical=p_logical)
    kinds = {simulate(image, [image[::-1].copy()], [], np.random.default_rng(s), options)[2] for s in range(10)}
    assert kinds == {bool(p_logical)}


def test_view_is_deterministic_per_seed_and_item_and_varies_with_the_draw(train_set):
    a = training_view(train_set, {"view": "anomaly_simulation"}, seed=3)
    b = training_view(train_set, {"view": "anomaly_simulation"}, seed=3)
    c = training_view(train_set, {"view": "anomaly_simulation"}, seed=4)
    n = len(train_set)
    assert len(a) == n * 100
    for index in (0, n + 1, 5 * n + 2):
        x, y = a[index], b[index]
        assert torch.equal(x["simulated"], y["simulated"]) and torch.equal(x["simulated_mask"], y["simulated_mask"])
    assert not torch.equal(a[0]["simulated_mask"], c[0]["simulated_mask"])
    first, later = a[0], a[n]  # same image, another draw
    assert first["index"] == later["index"] == 0 and later["draw"] == 1
    assert not torch.equal(first["simulated_mask"], later["simulated_mask"])


def test_view_serves_normal_and_simulated_pairs_the_method_reads(train_set):
    view = training_view(train_set, {"view": "anomaly_simulation", "p_logical": 0.5}, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(view, batch_size=4, shuffle=False)))
    assert batch["image"].shape == batch["simulated"].shape == (4, 3, 64, 64)
    assert batch["image"].dtype == batch["simulated"].dtype == torch.float32
    assert batch["simulated_mask"].shape == (4, 64, 64) and batch["simulated_mask"].dtype == torch.float32
    assert set(batch["simulated_mask"].unique().tolist()) <= {0.0, 1.0}
    assert (batch["simulated_mask"].flatten(1).sum(1) >= 1).all()
    assert (batch["label"] == 0).all() and batch["index"].tolist() == [0, 1, 2, 3]
    # the simulated image differs from its normal only inside the mask
    outside = batch["simulated_mask"][:, None].expand_as(batch["image"]) == 0
    assert torch.equal(batch["image"][outside], batch["simulated"][outside])
    assert (batch["image"] != batch["simulated"]).any()


def test_bad_options_fail_naming_the_option(train_set, tmp_path):
    with pytest.raises(DatasetError, match="p_logicall"):
        training_view(train_set, {"view": "anomaly_simulation", "p_logicall": 0.5}, 0)
    with pytest.raises(DatasetError, match="'p_logical'"):
        training_view(train_set, {"view": "anomaly_simulation", "p_logical": 1.5}, 0)
    with pytest.raises(DatasetError, match="logical_sources"):
        training_view(train_set, {"view": "anomaly_simulation", "logical_sources": "other,teleport"}, 0)
    with pytest.raises(DatasetError, match="texture_dir"):
        training_view(train_set, {"view": "anomaly_simulation", "texture_dir": str(tmp_path / "nope")}, 0)


def test_a_texture_folder_is_a_structural_source(train_set, tmp_path):
    import cv2

    texture = np.zeros((40, 40, 3), np.uint8)
    texture[::2] = 255  # stripes: unlike any synthetic image
    cv2.imwrite(str(tmp_path / "stripes.png"), texture)
    view = training_view(train_set, {"view": "anomaly_simulation", "texture_dir": str(tmp_path), "p_logical": 0.0,
                                     "p_structural_self": 0.0, "structural_ops": 0}, 0)
    assert len(view.textures) == 1
    item = view[0]
    assert item["simulated_logical"] == 0 and item["simulated_mask"].sum() > 0
