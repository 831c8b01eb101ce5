"""Metrics of the MVTec LOCO / MVTec AD protocols: exact values on hand-made cases,
agreement with independent computations, the fast (binned) path, and the None rules."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from logicad.data.ground_truth import DefectType, Region
from logicad.pipelines.evaluate.metrics import (
    LocoEvaluator,
    aupro,
    auc_spro,
    bootstrap_aurocs,
    compute_metrics,
    image_auroc,
    image_aurocs,
    normalised_area,
    pixel_auroc,
    roc_curve,
)

CONTRACT_KEYS = {"image_auroc", "image_auroc_logical", "image_auroc_structural", "image_auroc_all", "pixel_auroc",
                 "pixel_auroc_logical", "pixel_auroc_structural", "spro_0.05", "spro_0.3", "aupro_0.3", "n_test", "n_good", "n_logical", "n_structural"}
PIXEL_KEYS = ("pixel_auroc", "spro_0.05", "spro_0.3", "aupro_0.3")


def region(mask: np.ndarray, saturation: float | None = None, name: str = "defect") -> Region:
    mask = np.asarray(mask, dtype=bool)
    return Region(mask, name, float(mask.sum()) if saturation is None else float(saturation))


def box(shape: tuple[int, int], y: int, x: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def pair_count_auroc(scores, labels) -> float:
    """Brute force: P(positive > negative) + P(tie) / 2 over all pairs."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def brute_force_curve_area(maps, regions_per_image, limit, per_component=False):
    """Independent sPRO / PRO: loop over every distinct value as a threshold (value >= t),
    TP area per region (or per 8-connected component of the union), FPR pooled."""
    maps = [np.asarray(m, np.float32) for m in maps]
    unions = [np.logical_or.reduce([r.mask for r in rs]) if rs else np.zeros(m.shape, bool)
              for m, rs in zip(maps, regions_per_image)]
    negatives = np.concatenate([m[~u] for m, u in zip(maps, unions)])
    if per_component:
        parts = []
        for m, u in zip(maps, unions):
            labels, n = ndimage.label(u, structure=np.ones((3, 3)))
            parts += [(m[labels == i], float((labels == i).sum())) for i in range(1, n + 1)]
    else:
        parts = [(m[r.mask], r.saturation_area) for m, rs in zip(maps, regions_per_image) for r in rs]
    thresholds = np.r_[np.inf, np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]]
    fpr = np.array([(negatives >= t).mean() for t in thresholds])
    y = np.array([np.mean([min((v >= t).sum() / s, 1.0) for v, s in parts]) for t in thresholds])
    return normalised_area(fpr, y, limit)


def structured_case(rng, n_images=24, shape=(90, 120), center=0.0, spread=1.0, signal=2.0, quantum=None):
    """Smooth noise maps; anomalous images carry two elliptic regions (one absolute, one
    relative saturation) with a raised response of random strength."""
    kinds, maps, regions, scores = [], [], [], []
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for i in range(n_images):
        kind = ("good", "logical", "structural")[i % 3]
        amap = ndimage.gaussian_filter(rng.normal(size=shape), 3)
        amap = center + spread * amap / amap.std()
        image_regions = []
        if kind != "good":
            for j in range(2):
                cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
                mask = (yy - cy) ** 2 / rng.integers(20, 120) + (xx - cx) ** 2 / rng.integers(20, 120) < 1
                amap[mask] += signal * spread * rng.random()
                defect = DefectType("d", j + 1, 150.0, False) if j == 0 else DefectType("e", j + 1, 0.6, True)
                image_regions.append(Region(mask, defect.name, defect.saturation_area(int(mask.sum()))))
        if quantum:
            amap = np.round(amap / quantum) * quantum  # many ties
        kinds.append(kind)
        maps.append(amap.astype(np.float32))
        regions.append(image_regions)
        scores.append(float(amap.max()))
    return scores, kinds, maps, regions


# ----------------------------------------------------------------------------- image level


def test_image_auroc_agrees_with_pair_count_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 8, size=60).astype(float)  # heavy ties
        labels = rng.random(60) < 0.4
        assert image_auroc(scores, labels) == pytest.approx(pair_count_auroc(scores, labels), abs=1e-12)


def test_image_auroc_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=300), 1)
    labels = rng.random(300) < 0.3
    assert image_auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr = roc_curve(scores, labels)
    ref_fpr, ref_tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_image_auroc_is_none_with_one_class():
    assert image_auroc([0.1, 0.5], [0, 0]) is None
    assert image_auroc([0.1, 0.5], [1, 1]) is None


def test_roc_curve_runs_from_origin_to_one_and_integrates_to_auroc():
    scores, labels = [0.1, 0.4, 0.4, 0.8, 0.3, 0.9], [0, 0, 1, 1, 0, 1]
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert normalised_area(fpr, tpr, 1.0) == pytest.approx(image_auroc(scores, labels))


def test_image_aurocs_headline_is_mean_of_logical_and_structural():
    kinds = ["good"] * 3 + ["logical"] * 3 + ["structural"] * 3
    scores = [0.1, 0.2, 0.3, 0.25, 0.35, 0.15, 0.9, 0.8, 0.7]
    out = image_aurocs(scores, kinds)
    assert out["image_auroc_structural"] == 1.0
    assert out["image_auroc_logical"] == pytest.approx(pair_count_auroc([0.1, 0.2, 0.3, 0.25, 0.35, 0.15],
                                                                        [0, 0, 0, 1, 1, 1]))
    assert out["image_auroc"] == pytest.approx((out["image_auroc_logical"] + 1.0) / 2)
    assert out["image_auroc_all"] == pytest.approx(pair_count_auroc(scores, [k != "good" for k in kinds]))


def test_bootstrap_aurocs_pair_scorers_on_the_same_draws_and_shrink_with_more_images():
    rng = np.random.default_rng(0)

    def case(n):
        kinds = np.array(["good"] * n + ["logical"] * n + ["structural"] * n)
        perfect = np.r_[np.zeros(n), np.ones(2 * n)] + 0.1 * rng.random(3 * n)
        noisy = rng.random(3 * n)
        return kinds, perfect, noisy

    kinds, perfect, noisy = case(20)
    draws = bootstrap_aurocs([perfect, noisy, noisy], kinds, resamples=200, seed=1)
    assert draws.shape == (200, 3)
    assert np.all(draws[:, 0] == 1.0)  # a perfect scorer is perfect on every draw
    assert np.array_equal(draws[:, 1], draws[:, 2])  # the same scores on the same draws: no paired spread
    assert np.array_equal(draws, bootstrap_aurocs([perfect, noisy, noisy], kinds, resamples=200, seed=1))
    small = draws[:, 1].std()
    kinds, _, noisy = case(80)
    large = bootstrap_aurocs([noisy], kinds, resamples=200, seed=1)[:, 0].std()
    assert 0.3 < large / small < 0.7  # four times the images: about half the standard error
    with pytest.raises(ValueError, match="kinds"):
        bootstrap_aurocs([noisy[:-1]], kinds)


# ----------------------------------------------------------------------------- pixel level, exact values


def test_perfect_map_gives_one_for_every_metric():
    rng = np.random.default_rng(2)
    kinds, maps, regions, scores = [], [], [], []
    for i, kind in enumerate(["good", "logical", "structural"] * 3):
        image_regions = []
        if kind != "good":
            image_regions = [region(box((40, 50), 5, 5, 6, 8), saturation=20.0),
                             region(box((40, 50), 20, 30, 10, 4), saturation=0.5 * 40)]
        union = np.logical_or.reduce([r.mask for r in image_regions]) if image_regions else np.zeros((40, 50), bool)
        maps.append(union.astype(np.float32))
        regions.append(image_regions)
        kinds.append(kind)
        scores.append(float(kind != "good") + 0.1 * rng.random())
    result = compute_metrics(scores, kinds, maps, regions)
    assert set(result) == CONTRACT_KEYS
    for key in CONTRACT_KEYS - {"n_test", "n_good", "n_logical", "n_structural"}:
        assert result[key] == pytest.approx(1.0), key
    assert (result["n_test"], result["n_good"], result["n_logical"], result["n_structural"]) == (9, 3, 3, 3)


def test_constant_map_gives_half_image_and_pixel_auroc():
    kinds = ["good", "logical", "structural"] * 2
    regions = [[] if k == "good" else [region(box((20, 20), 3, 3, 5, 5))] for k in kinds]
    maps = [np.full((20, 20), 0.7, np.float32) for _ in kinds]
    result = compute_metrics([1.0] * 6, kinds, maps, regions)
    assert result["image_auroc"] == result["image_auroc_all"] == 0.5
    assert result["pixel_auroc"] == pytest.approx(0.5)
    # one threshold: FPR and sPRO jump together from 0 to 1, the chord is sPRO = FPR
    assert result["spro_0.05"] == pytest.approx(0.025)
    assert result["spro_0.3"] == pytest.approx(0.15)
    assert result["aupro_0.3"] == pytest.approx(0.15)


def test_spro_of_hand_computed_two_region_example_with_saturation():
    # Anomalous image, 2 x 4:          good image, 2 x 4:
    #   A A A A   0.9 0.5 0.3 0.1        0.65 0.5 0.0 0.0
    #   B B n n   0.6 0.2 0.85 0.0       0.0  0.0 0.0 0.0
    # Region A: area 4, absolute saturation threshold 2 -> s = min(2, 4) = 2.
    # Region B: area 2, relative saturation 0.5 -> s = 0.5 * 2 = 1.
    # Defect-free pixels (n): 0.85, 0.0 and the 8 good pixels -> N = 10.
    # Thresholds (value >= t), with FP count, sPRO_A = min(TP/2, 1), sPRO_B = min(TP/1, 1):
    #   t=inf : FP 0 F 0.0, A 0/2 -> 0,   B 0 -> 0   mean 0
    #   t=0.9 : FP 0 F 0.0, A 1/2 -> 0.5, B 0        mean 0.25
    #   t=0.85: FP 1 F 0.1, A 0.5,        B 0        mean 0.25
    #   t=0.65: FP 2 F 0.2, A 0.5,        B 0        mean 0.25
    #   t=0.6 : FP 2 F 0.2, A 0.5,        B 1/1 -> 1 mean 0.75
    #   t=0.5 : FP 3 F 0.3, A 2/2 -> 1,   B 1        mean 1.0  (the tie at 0.5 moves F and A together)
    #   lower t: mean 1.0
    # Curve: (0,0) (0,.25) (.1,.25) (.2,.25) (.2,.75) (.3,1) ... (1,1).
    # limit 0.05: 0.25 * 0.05 / 0.05                               = 0.25
    # limit 0.25: [0.25*0.2 + (0.75 + 0.875)/2 * 0.05] / 0.25      = 0.090625 / 0.25 = 0.3625
    #             (0.875 = the chord from (.2,.75) to (.3,1) interpolated at 0.25)
    # limit 0.3 : [0.05 + (0.75 + 1)/2 * 0.1] / 0.3                = 0.1375 / 0.3
    # limit 1.0 : 0.05 + 0.0875 + 0.7                              = 0.8375
    a_mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool)
    b_mask = np.array([[0, 0, 0, 0], [1, 1, 0, 0]], bool)
    anomalous = np.array([[0.9, 0.5, 0.3, 0.1], [0.6, 0.2, 0.85, 0.0]], np.float32)
    good = np.array([[0.65, 0.5, 0, 0], [0, 0, 0, 0]], np.float32)
    a = Region(a_mask, "a", DefectType("a", 1, 2, False).saturation_area(4))
    b = Region(b_mask, "b", DefectType("b", 2, 0.5, True).saturation_area(2))
    assert (a.saturation_area, b.saturation_area) == (2.0, 1.0)
    maps, regions = [anomalous, good], [[a, b], []]
    expected = {0.05: 0.25, 0.25: 0.3625, 0.3: 0.1375 / 0.3, 1.0: 0.8375}
    for limit, value in expected.items():
        assert auc_spro(maps, regions, limit) == pytest.approx(value, abs=1e-12)
        assert auc_spro(maps, regions, limit, max_exact_pixels=0) == pytest.approx(value, abs=1e-12)
        assert brute_force_curve_area(maps, regions, limit) == pytest.approx(value, abs=1e-12)


def test_normalised_area_interpolates_at_the_limit():
    fpr, y = np.array([0.0, 0.1, 0.2, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    # up to 0.15: 0.1 * 0.25 + 0.05 * (0.5 + 0.75) / 2 = 0.05625
    assert normalised_area(fpr, y, 0.15) == pytest.approx(0.05625 / 0.15)
    assert normalised_area(fpr, y, 0.1) == pytest.approx(0.25)
    assert normalised_area(fpr, y, 1.0) == pytest.approx(0.025 + 0.075 + 0.8)
    with pytest.raises(ValueError):
        normalised_area(fpr, y, 0.0)


@pytest.mark.parametrize("max_exact_pixels", [2_000_000, 0])
def test_fpr_limited_spro_matches_closed_form_ramp(max_exact_pixels):
    # 1000 defect-free pixels with values 1..1000 and one region of 1000 pixels with the
    # same values, saturated at half its area: at threshold k both have 1001-k pixels
    # above, so F = (1001-k)/1000 and sPRO = min(2F, 1): the curve is min(2f, 1) and the
    # normalised area is L for L <= 0.5, (0.25 + (L - 0.5)) / L above.
    values = np.arange(1, 1001, dtype=np.float32).reshape(20, 50)
    amap = np.concatenate([values, values])
    mask = np.zeros(amap.shape, bool)
    mask[20:] = True
    regions = [[Region(mask, "ramp", DefectType("ramp", 1, 0.5, True).saturation_area(1000))]]
    for limit in (0.05, 0.0333, 0.3, 0.5, 0.7, 1.0):
        expected = limit if limit <= 0.5 else (0.25 + limit - 0.5) / limit
        got = auc_spro([amap], regions, limit, max_exact_pixels=max_exact_pixels)
        assert got == pytest.approx(expected, abs=1e-9), limit


def test_aupro_averages_connected_components_not_regions():
    # One region made of two separate blobs (4 and 2 pixels); the map finds only the first.
    # At FPR 0, per component (AUPRO) PRO = (1 + 0) / 2 = 0.5; per region (sPRO with
    # saturation = area) the overlap is 4 / 6.
    amap = np.zeros((10, 10), np.float32)
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # blob 1, found (value 1)
    mask[6, 6:8] = True  # blob 2, missed (value 0 like the background)
    amap[1:3, 1:3] = 1.0
    regions = [[region(mask)]]
    # the background ties with blob 2 at 0: the last chord goes from (0, y0) to (1, 1)
    for limit in (0.05, 0.3):
        pro_0 = 0.5
        assert aupro([amap], regions, limit) == pytest.approx(pro_0 + (1 - pro_0) * limit / 2)
        spro_0 = 4 / 6
        assert auc_spro([amap], regions, limit) == pytest.approx(spro_0 + (1 - spro_0) * limit / 2)
        assert aupro([amap], regions, limit) == pytest.approx(
            brute_force_curve_area([amap], regions, limit, per_component=True))


def test_exact_path_agrees_with_brute_force_on_random_maps_with_ties():
    rng = np.random.default_rng(3)
    scores, kinds, maps, regions = structured_case(rng, n_images=6, shape=(24, 30), signal=1.0, quantum=0.25)
    for limit in (0.05, 0.3):
        assert auc_spro(maps, regions, limit) == pytest.approx(brute_force_curve_area(maps, regions, limit), abs=1e-12)
        assert aupro(maps, regions, limit) == pytest.approx(
            brute_force_curve_area(maps, regions, limit, per_component=True), abs=1e-12)
    unions = [np.logical_or.reduce([r.mask for r in rs]) if rs else np.zeros(m.shape, bool)
              for m, rs in zip(maps, regions)]
    pixels = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([u.ravel() for u in unions])
    assert pixel_auroc(maps, regions) == pytest.approx(pair_count_auroc(pixels, labels), abs=1e-12)


def test_loco_spro_is_mean_of_good_plus_logical_and_good_plus_structural():
    rng = np.random.default_rng(4)
    scores, kinds, maps, regions = structured_case(rng, n_images=9, shape=(30, 40))
    result = compute_metrics(scores, kinds, maps, regions)
    per_kind = []
    for kind in ("logical", "structural"):
        keep = [i for i, k in enumerate(kinds) if k in ("good", kind)]
        per_kind.append(auc_spro([maps[i] for i in keep], [regions[i] for i in keep], 0.05))
    assert result["spro_0.05"] == pytest.approx(np.mean(per_kind), abs=1e-12)
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(maps, regions), abs=1e-12)


# ----------------------------------------------------------------------------- chance level, fast path


def test_random_maps_give_chance_auroc_and_fpr_proportional_spro():
    rng = np.random.default_rng(5)
    kinds = ["good", "logical", "structural"] * 40
    maps = [rng.random((40, 40), dtype=np.float32) for _ in kinds]
    regions = [[] if k == "good" else [region(box((40, 40), *rng.integers(0, 25, 2), 12, 12))] for k in kinds]
    result = compute_metrics(rng.random(len(kinds)), kinds, maps, regions)
    assert abs(result["image_auroc"] - 0.5) < 0.12
    assert abs(result["pixel_auroc"] - 0.5) < 0.01
    # no signal: sPRO(f) ~ f, so the normalised area ~ limit / 2
    assert result["spro_0.05"] == pytest.approx(0.025, abs=0.006)
    assert result["spro_0.3"] == pytest.approx(0.15, abs=0.02)
    assert result["aupro_0.3"] == pytest.approx(0.15, abs=0.02)


@pytest.mark.parametrize("center,spread", [(0.0, 1.0), (1.0, 0.02), (10.0, 0.001)])
def test_binned_path_agrees_with_exact_path(center, spread):
    rng = np.random.default_rng(6)
    scores, kinds, maps, regions = structured_case(rng, center=center, spread=spread)
    exact = compute_metrics(scores, kinds, maps, regions, max_exact_pixels=10**9)
    binned = compute_metrics(scores, kinds, maps, regions, max_exact_pixels=0)
    switched = compute_metrics(scores, kinds, maps, regions, max_exact_pixels=60_000)  # switches mid-way
    for key in PIXEL_KEYS:
        assert exact[key] is not None
        assert binned[key] == pytest.approx(exact[key], abs=1e-3), key
        assert switched[key] == pytest.approx(exact[key], abs=1e-3), key


# ----------------------------------------------------------------------------- contract and errors


def test_missing_logical_split_gives_none_logical_keys():
    rng = np.random.default_rng(7)
    scores, kinds, maps, regions = structured_case(rng, n_images=9, shape=(30, 40))
    keep = [i for i, k in enumerate(kinds) if k != "logical"]  # MVTec AD: good + structural
    scores, kinds = [scores[i] for i in keep], [kinds[i] for i in keep]
    maps, regions = [maps[i] for i in keep], [regions[i] for i in keep]
    result = compute_metrics(scores, kinds, maps, regions)
    assert result["image_auroc_logical"] is None and result["n_logical"] == 0
    assert result["image_auroc"] == result["image_auroc_structural"] == result["image_auroc_all"]
    assert result["spro_0.05"] == pytest.approx(auc_spro(maps, regions, 0.05), abs=1e-12)
    assert all(result[k] is not None for k in PIXEL_KEYS)


def test_no_masks_gives_none_pixel_keys():
    rng = np.random.default_rng(8)
    kinds = ["good", "logical", "structural"] * 2
    maps = [rng.random((16, 16), dtype=np.float32) for _ in kinds]
    result = compute_metrics(rng.random(6), kinds, maps, [[] for _ in kinds])
    assert set(result) == CONTRACT_KEYS
    assert all(result[k] is None for k in PIXEL_KEYS)
    assert result["image_auroc"] is not None
    no_maps = compute_metrics(rng.random(6), kinds)
    assert all(no_maps[k] is None for k in PIXEL_KEYS) and no_maps["n_test"] == 6


def test_only_good_images_gives_none_everywhere_but_counts():
    result = compute_metrics([0.1, 0.2], ["good", "good"], [np.zeros((4, 4))] * 2, [[], []])
    assert all(result[k] is None for k in CONTRACT_KEYS if not k.startswith("n_"))
    assert (result["n_test"], result["n_good"]) == (2, 2)


def test_mismatched_map_and_mask_size_raises_value_error():
    evaluator = LocoEvaluator()
    with pytest.raises(ValueError, match="1600x1100.*800x550"):
        evaluator.add("structural", 1.0, np.zeros((1100, 1600), np.float32),
                      [region(np.ones((550, 800), bool))])


def test_bad_inputs_raise_value_error():
    evaluator = LocoEvaluator()
    with pytest.raises(ValueError, match="NaN"):
        evaluator.add("good", 1.0, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="kind"):
        evaluator.add("weird", 1.0, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="good image"):
        evaluator.add("good", 1.0, np.zeros((4, 4)), [region(np.ones((4, 4), bool))])
    with pytest.raises(ValueError, match="2-D"):
        evaluator.add("good", 1.0, np.zeros((1, 4, 4)))


# ----------------------------------------------------------------------------- speed


def test_streaming_fifty_full_size_images_is_fast(capsys):
    """~50 MVTec LOCO-sized maps (1600 x 1100) through the streaming API; prints the time."""
    rng = np.random.default_rng(9)
    height, width = 1100, 1600
    small = rng.random((height // 20, width // 20)).astype(np.float32)
    base = np.kron(small, np.ones((20, 20), np.float32)) + 0.05 * rng.random((height, width), dtype=np.float32)
    evaluator = LocoEvaluator()
    spent = 0.0
    for i in range(50):
        kind = ("good", "logical", "structural")[i % 3]
        amap = np.roll(base, 37 * i, axis=1)
        regions = []
        if kind != "good":
            regions = [region(box((height, width), 100 + 7 * i, 200 + 11 * i, 150, 250), saturation=5000),
                       region(box((height, width), 600, 900 - 5 * i, 80, 400), saturation=0.5 * 80 * 400)]
            for r in regions:
                amap[r.mask] += 0.5
        start = time.perf_counter()
        evaluator.add(kind, float(amap.max()), amap, regions)
        spent += time.perf_counter() - start
    start = time.perf_counter()
    result = evaluator.result()
    spent_result = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[metrics timing] 50 images 1600x1100: add {spent:.2f} s ({1000 * spent / 50:.1f} ms/image), "
              f"result {spent_result:.2f} s; ~500 images -> ~{10 * spent + spent_result:.0f} s")
    assert evaluator.pixels.binned
    assert 0.5 < result["pixel_auroc"] <= 1.0 and 0.0 < result["spro_0.05"] <= 1.0
    assert spent + spent_result < 120  # loose: minutes would mean a broken fast path


def test_pixel_auroc_per_kind_shows_which_kind_pulls_the_whole_down():
    """A map that lights structural defects but stays dark on a logical region (a missing part
    leaves empty background) scores 1.0 on good + structural, 0.0 on good + logical."""
    kinds = ["good", "logical", "structural"]
    regions = [[], [region(box((20, 20), 2, 2, 6, 6))], [region(box((20, 20), 10, 10, 6, 6))]]
    maps = [np.full((20, 20), 0.5, np.float32) for _ in kinds]
    maps[1][2:8, 2:8] = 0.1
    maps[2][10:16, 10:16] = 0.9
    result = compute_metrics([0.0, 1.0, 1.0], kinds, maps, regions)
    assert result["pixel_auroc_structural"] == pytest.approx(1.0)
    assert result["pixel_auroc_logical"] == pytest.approx(0.0)
    assert 0.0 < result["pixel_auroc"] < 1.0
