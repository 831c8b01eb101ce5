"""Drawn structural defects (scratch, stain, dent) and the structural families of the objective set."""

from __future__ import annotations

import numpy as np
import pytest

from logicad.data import AnomalyDataset, load_split
from logicad.data.anomaly_synthesis import STRUCTURAL_FAMILIES, SyntheticAnomalySet
from logicad.data.drawn_defects import DRAWN, drawn_anomaly
from logicad.data.synthetic import SyntheticSpec, make_synthetic
from logicad.data.views import synthesis_families

SPEC = SyntheticSpec(size=96, n_train=1, n_validation=4, n_test_good=1, n_test_logical=1, n_test_structural=1)


@pytest.fixture(scope="module")
def normals(tmp_path_factory) -> AnomalyDataset:
    """Four validation normals of the synthetic screw_kit at 96 px."""
    root = tmp_path_factory.mktemp("kit")
    make_synthetic(root, SPEC, ["screw_kit"])
    return load_split("mvtec_loco", root, "screw_kit", "validation", 96)


@pytest.mark.parametrize("kind", sorted(DRAWN))
def test_each_drawn_defect_changes_pixels_inside_its_small_mask_only(normals, kind):
    for seed in range(8):
        image = normals.images[seed % len(normals)]
        out, mask = DRAWN[kind](image, np.random.default_rng(seed))
        changed = (out != image).any(axis=2)
        assert out.shape == image.shape and out.dtype == np.uint8 and mask.dtype == bool
        assert not changed[~mask].any() and changed.any()
        assert mask.mean() < 0.1  # a local defect, not a repaint


def test_scratches_and_stains_are_visible_and_dents_move_the_image_own_pixels(normals):
    image = normals.images[0]
    for seed in range(6):
        for kind in ("scratch", "stain"):
            out, mask = DRAWN[kind](image, np.random.default_rng(seed))
            assert np.abs(out[mask].astype(int) - image[mask]).max() > 40
        out, mask = DRAWN["dent"](image, np.random.default_rng(seed))
        assert np.abs(out[mask].astype(int) - image[mask]).max() > 0


def test_a_drawn_anomaly_is_fixed_by_its_generator(normals):
    a = drawn_anomaly(normals.images[1], np.random.default_rng(3))
    b = drawn_anomaly(normals.images[1], np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_structural_anomalies_alternate_over_the_chosen_families(normals):
    both = SyntheticAnomalySet(normals, seed=0, n_per_kind=4)
    assert both.structural_families == list(STRUCTURAL_FAMILIES) == ["texture", "drawn"]
    drawn = SyntheticAnomalySet(normals, seed=0, n_per_kind=4, structural_families=["drawn"])
    texture = SyntheticAnomalySet(normals, seed=0, n_per_kind=4, structural_families=["texture"])
    start = len(normals) + 4  # after the normals and the logical anomalies
    for i in range(4):
        source = texture if i % 2 == 0 else drawn
        assert np.array_equal(both.images[start + i], source.images[start + i])
    assert not np.array_equal(drawn.images[start], texture.images[start])
    with pytest.raises(ValueError, match="structural_families"):
        SyntheticAnomalySet(normals, structural_families=["scribble"])


def test_slsg_s_simulation_view_declares_the_texture_family():
    assert synthesis_families({"view": "anomaly_simulation"}) == ("texture",)
    assert synthesis_families(None) == ()
