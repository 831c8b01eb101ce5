"""The synthetic MVTec LOCO generator: exact layout, determinism, real rules and defects, speed."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from logicad.data.synthetic import (
    CATEGORIES,
    SyntheticSpec,
    defects_config,
    make_synthetic,
    render_sample,
    rule_violations,
)

SPEC = SyntheticSpec(size=128, n_train=4, n_validation=2, n_test_good=3, n_test_logical=6, n_test_structural=8, seed=3)
TINY = SyntheticSpec(size=64, n_train=2, n_validation=1, n_test_good=1, n_test_logical=3, n_test_structural=4, seed=5)
SPLIT_FOLDERS = {
    "train/good": "n_train",
    "validation/good": "n_validation",
    "test/good": "n_test_good",
    "test/logical_anomalies": "n_test_logical",
    "test/structural_anomalies": "n_test_structural",
}
CONFIG_KEYS = {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    dirs = make_synthetic(root, SPEC)
    assert dirs == [root / c for c in CATEGORIES]
    return root


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(cat: Path) -> dict[int, dict]:
    return {e["pixel_value"]: e for e in json.loads((cat / "defects_config.json").read_text())}


def _gt_names(cat: Path, kind: str) -> set[str]:
    """Defect names that occur in the ground truth of one anomaly kind."""
    config = _config(cat)
    masks = (cat / "ground_truth" / kind).rglob("*.png")
    values = {int(v) for p in masks for v in np.unique(np.asarray(Image.open(p)))}
    return {config[v]["defect_name"] for v in values - {0}}


def test_layout_is_exactly_mvtec_locos_folders_and_file_names(tree):
    assert sorted(p.name for p in tree.iterdir()) == sorted(CATEGORIES)
    for category in CATEGORIES:
        cat = tree / category
        assert _files(cat) == ["defects_config.json", "ground_truth", "test", "train", "validation"]
        assert _files(cat / "train") == ["good"] and _files(cat / "validation") == ["good"]
        assert _files(cat / "test") == ["good", "logical_anomalies", "structural_anomalies"]
        assert _files(cat / "ground_truth") == ["logical_anomalies", "structural_anomalies"]
        for folder, count in SPLIT_FOLDERS.items():
            assert _files(cat / folder) == [f"{i:03d}.png" for i in range(getattr(SPEC, count))]


def test_images_are_rgb_at_a_non_square_category_size(tree):
    sizes = set()
    for category in CATEGORIES:
        images = [Image.open(p) for folder in SPLIT_FOLDERS for p in (tree / category / folder).glob("*.png")]
        assert {im.mode for im in images} == {"RGB"}
        (size,) = {im.size for im in images}
        assert min(size) == SPEC.size and max(size) > SPEC.size
        sizes.add(size)
    assert len(sizes) == len(CATEGORIES)  # landscape and portrait shapes both occur
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)


def test_every_anomalous_image_has_ground_truth_pngs_with_config_values(tree):
    for category in CATEGORIES:
        cat, config = tree / category, _config(tree / category)
        for kind in ("logical_anomalies", "structural_anomalies"):
            images = _files(cat / "test" / kind)
            assert _files(cat / "ground_truth" / kind) == [Path(n).stem for n in images]
            for name in images:
                size = Image.open(cat / "test" / kind / name).size
                masks = _files(cat / "ground_truth" / kind / Path(name).stem)
                assert masks and masks == [f"{i:03d}.png" for i in range(len(masks))]
                for mask_name in masks:
                    mask = Image.open(cat / "ground_truth" / kind / Path(name).stem / mask_name)
                    assert mask.mode == "L" and mask.size == size
                    values = set(np.unique(np.asarray(mask)).tolist()) - {0}
                    assert len(values) == 1 and values <= set(config)  # one region of one defect type


def test_good_test_images_have_no_ground_truth(tree):
    for category in CATEGORIES:
        assert not (tree / category / "ground_truth" / "good").exists()


def test_defects_config_has_locos_keys_types_and_sensible_saturation(tree):
    for category in CATEGORIES:
        entries = json.loads((tree / category / "defects_config.json").read_text())
        assert isinstance(entries, list) and entries
        assert entries == defects_config(category, SPEC.size)
        values = [e["pixel_value"] for e in entries]
        assert len(set(values)) == len(values) and all(1 <= v <= 255 for v in values)
        assert len({e["defect_name"] for e in entries}) == len(entries)
        for e in entries:
            assert set(e) == CONFIG_KEYS
            assert isinstance(e["defect_name"], str) and type(e["pixel_value"]) is int
            assert type(e["relative_saturation"]) is bool
            threshold = e["saturation_threshold"]
            assert isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
            if e["relative_saturation"]:
                assert 0 < threshold <= 1
            else:
                assert type(threshold) is int and 1 <= threshold < SPEC.size * SPEC.size


def test_each_category_has_logical_and_structural_defect_types(tree):
    for category in CATEGORIES:
        logical = _gt_names(tree / category, "logical_anomalies")
        structural = _gt_names(tree / category, "structural_anomalies")
        assert len(logical) >= 2 and len(structural) >= 4 and not logical & structural
        assert logical | structural == {e["defect_name"] for e in _config(tree / category).values()}


def test_same_seed_gives_identical_bytes_independent_of_other_categories(tree, tmp_path):
    make_synthetic(tmp_path / "a", SPEC, [CATEGORIES[1]])
    assert _digests(tmp_path / "a" / CATEGORIES[1]) == _digests(tree / CATEGORIES[1])
    make_synthetic(tmp_path / "b", TINY, CATEGORIES[0])
    make_synthetic(tmp_path / "c", TINY, [CATEGORIES[0]])
    assert _digests(tmp_path / "b") == _digests(tmp_path / "c")


def test_different_seeds_give_different_images(tmp_path):
    for seed in (5, 6):
        make_synthetic(tmp_path / str(seed), SyntheticSpec(**{**TINY.__dict__, "seed": seed}))
    for category in CATEGORIES:
        a, b = _digests(tmp_path / "5" / category), _digests(tmp_path / "6" / category)
        images = [k for k in a if k.endswith(".png") and not k.startswith("ground_truth")]
        assert images and all(a[k] != b[k] for k in images)


def test_rerun_replaces_a_category_cleanly_and_leaves_the_others(tmp_path):
    first, second = CATEGORIES[0], CATEGORIES[2]
    make_synthetic(tmp_path, TINY, [first, second])
    (tmp_path / first / "test" / "good" / "999.png").write_bytes(b"stale")
    kept = _digests(tmp_path / second)
    make_synthetic(tmp_path, SyntheticSpec(**{**TINY.__dict__, "n_train": 1, "n_test_logical": 1}), [first])
    assert _files(tmp_path / first / "train" / "good") == ["000.png"]
    assert _files(tmp_path / first / "test" / "good") == ["000.png"]
    assert _files(tmp_path / first / "ground_truth" / "logical_anomalies") == ["000"]
    assert _digests(tmp_path / second) == kept


def test_normal_images_are_not_identical_to_each_other(tree):
    for category in CATEGORIES:
        paths = sorted((tree / category / "train" / "good").glob("*.png"))
        images = [np.asarray(Image.open(p), np.float32) for p in paths]
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                assert np.abs(images[i] - images[j]).mean() > 2.0


@pytest.mark.parametrize("category", CATEGORIES)
def test_normal_scenes_obey_every_rule_and_logical_anomalies_break_exactly_theirs(category):
    spec = SyntheticSpec(size=96, seed=11)
    for index in range(12):
        for split in ("train", "validation", "good", "structural"):
            assert rule_violations(render_sample(category, spec, split, index).scene) == set()
        anomaly = render_sample(category, spec, "logical", index)
        assert rule_violations(anomaly.scene) == {name for name, _ in anomaly.regions}


def _check_differs_inside(anomaly, twin, size: int, structural: bool) -> None:
    diff = np.abs(anomaly.image.astype(np.float32) - twin.image.astype(np.float32)).mean(axis=2)
    union = np.zeros(diff.shape, bool)
    for name, region in anomaly.regions:
        assert region.shape == diff.shape and region.sum() > 0, name
        if not structural:  # logical anomalies concern whole parts, visible at 128-256 px
            assert region.sum() >= (0.05 * size) ** 2, name
        changed = diff[region] > 20
        absolute = next(e for e in defects_config(anomaly.scene.category, size) if e["defect_name"] == name)
        if not absolute["relative_saturation"]:  # a missing item: the region is where it could be (a whole
            # compartment or bag); the changed pixels make up about the one item of the saturation threshold
            assert changed.sum() > 0.3 * absolute["saturation_threshold"], (name, changed.sum())
        else:
            assert changed.mean() > (0.5 if structural else 0.08), (name, changed.mean())
        union |= region
    if structural:  # masks cover the altered pixels: outside them (blur aside) nothing changed
        assert diff[~ndimage.binary_dilation(union, iterations=2)].max() == 0


@pytest.mark.parametrize("category", CATEGORIES)
def test_anomalies_differ_from_their_defect_free_twin_inside_the_mask(category):
    spec = SyntheticSpec(size=128, seed=2)
    for split in ("logical", "structural"):
        for index in range(8):
            anomaly = render_sample(category, spec, split, index)
            twin = render_sample(category, spec, split, index, with_defects=False)
            assert not twin.regions and anomaly.regions
            _check_differs_inside(anomaly, twin, spec.size, split == "structural")


def test_unknown_category_raises_value_error_naming_the_valid_ones(tmp_path):
    with pytest.raises(ValueError) as info:
        make_synthetic(tmp_path, TINY, [CATEGORIES[0], "no_such_thing"])
    assert "no_such_thing" in str(info.value)
    assert all(c in str(info.value) for c in CATEGORIES)
    assert not (tmp_path / CATEGORIES[0]).exists()


@pytest.mark.parametrize("change", [{"size": 8}, {"n_test_logical": 0}, {"seed": -1}])
def test_invalid_spec_raises_value_error(tmp_path, change):
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, SyntheticSpec(**{**TINY.__dict__, **change}))


def test_default_dataset_for_all_categories_generates_in_under_a_minute(tmp_path):
    """CPU seconds of this process (all its threads), so that other processes on a shared
    machine do not fail the test: about 16 s for the four categories (8 s wall on 2 free cores)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    dirs = make_synthetic(tmp_path, SyntheticSpec())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"default synthetic dataset ({len(dirs)} categories): {seconds:.1f} s wall, {cpu:.1f} CPU s")
    assert len(list((tmp_path / CATEGORIES[0] / "train" / "good").glob("*.png"))) == SyntheticSpec().n_train
    assert cpu < 60


# --- screw_bag: the random layout ------------------------------------------------------------------
def test_screw_bag_is_a_later_category_and_the_cli_default_stays_first():
    assert CATEGORIES[0] == "parts_box" and "screw_bag" in CATEGORIES[3:]


def test_screw_bag_has_the_loco_layout_and_its_own_defect_types(tree):
    cat = tree / "screw_bag"
    for folder, key in SPLIT_FOLDERS.items():
        assert _files(cat / folder) == [f"{i:03d}.png" for i in range(getattr(SPEC, key))]
    assert _gt_names(cat, "logical_anomalies") == {"missing_item", "extra_item", "wrong_size"}
    assert _gt_names(cat, "structural_anomalies") == {"scratch", "hole", "contamination", "broken_part", "bent_item"}


def test_screw_bag_missing_item_is_the_whole_bag_with_an_absolute_one_item_saturation(tree):
    from logicad.data.synthetic import screw_bag

    entry = next(e for e in _config(tree / "screw_bag").values() if e["defect_name"] == "missing_item")
    assert entry["relative_saturation"] is False
    assert entry["saturation_threshold"] == round(screw_bag.ITEM_AREA * SPEC.size**2)
    spec = SyntheticSpec(size=96, seed=4)
    for index in range(0, 9, 3):  # logical index % 3 == 0: missing_item
        sample = render_sample("screw_bag", spec, "logical", index)
        (name, region), = sample.regions
        assert name == "missing_item" and len(sample.scene.items) == sum(screw_bag.BAG_COUNTS.values()) - 1
        # the region is where any item may lie (far larger than one item), and holds every item
        assert region.sum() > 10 * entry["saturation_threshold"] * (96 / SPEC.size) ** 2
        for item in sample.scene.items:
            assert region[sample.scene.footprint(item)].all()


def test_screw_bag_normal_images_hold_the_counts_and_one_screw_length_at_random_places():
    from logicad.data.synthetic import screw_bag

    spec = SyntheticSpec(size=96, seed=1)
    places = {}
    for index in range(10):
        scene = render_sample("screw_bag", spec, "train", index).scene
        kinds = [it.kind for it in scene.items]
        assert {k: kinds.count(k) for k in screw_bag.BAG_COUNTS} == screw_bag.BAG_COUNTS
        assert all(it.variant == "" and it.bend == 0 for it in scene.items)
        footprints = [scene.footprint(it) for it in scene.items]
        assert sum(f.sum() for f in footprints) == np.logical_or.reduce(footprints).sum()  # no overlaps
        for it in scene.items:
            places.setdefault(it.kind, []).append((it.x, it.y, it.angle))
    for kind, xya in places.items():  # no position rule: places and angles spread over the bag
        x, y, angle = np.array(xya).T
        assert x.std() > 0.15 and y.std() > 0.1 and angle.std() > 1.0, kind


def test_screw_bag_logical_anomalies_change_the_count_or_one_screws_length():
    from logicad.data.synthetic import screw_bag

    spec = SyntheticSpec(size=96, seed=2)
    expected = sum(screw_bag.BAG_COUNTS.values())
    for index in range(9):
        sample = render_sample("screw_bag", spec, "logical", index)
        name = sample.regions[0][0]
        items = sample.scene.items
        if name == "missing_item":
            assert len(items) == expected - 1
        elif name == "extra_item":
            assert len(items) == expected + 1
        else:
            assert name == "wrong_size" and len(items) == expected
            lengths = sorted(screw_bag.SCREW_LENGTHS[it.variant] for it in items if it.kind == "screw")
            assert lengths.count(screw_bag.SCREW_LEN) == 1
            assert abs(lengths[0] - lengths[1]) >= 0.3 * screw_bag.SCREW_LEN
            wrong = next(it for it in items if it.variant)
            assert (sample.regions[0][1] & sample.scene.footprint(wrong)).sum() == sample.scene.footprint(wrong).sum()


def test_screw_bag_bent_item_bends_one_screw():
    index = 4  # structural index % 5 == 4: bent_item first
    sample = render_sample("screw_bag", SyntheticSpec(size=96, seed=3), "structural", index)
    assert sample.regions[0][0] == "bent_item"
    bent = [it for it in sample.scene.items if it.bend]
    assert len(bent) == 1 and bent[0].kind == "screw" and np.deg2rad(25) <= abs(bent[0].bend) <= np.deg2rad(45)


def test_screw_bag_generates_fast_and_deterministically(tmp_path):
    spec = SyntheticSpec(size=96, n_train=8, n_validation=2, n_test_good=2, n_test_logical=6, n_test_structural=10)
    start = time.process_time()  # CPU seconds: robust to a loaded machine
    make_synthetic(tmp_path / "a", spec, ["screw_bag"])
    seconds = time.process_time() - start
    make_synthetic(tmp_path / "b", spec, ["screw_bag"])
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert seconds / 28 < 0.25, f"{seconds / 28:.2f} CPU s per 96 px image"
