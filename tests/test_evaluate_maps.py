"""`logicad evaluate-maps`: maps in MVTec's layout from any tool are scored per the LOCO protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logicad.data import load_defects, sample_regions, scan
from logicad.data.images import read_size
from logicad.pipelines.cli import main
from logicad.pipelines.evaluate.maps import map_path, write_map

METRICS = ("image_auroc", "image_auroc_logical", "image_auroc_structural", "image_auroc_all", "pixel_auroc",
           "spro_0.05", "spro_0.3", "aupro_0.3")


def _write_maps(root, data, category, make_map) -> None:
    defects = load_defects("mvtec_loco", data, category)
    for sample in scan("mvtec_loco", data, category, "test"):
        write_map(root, category, sample, make_map(sample, read_size(sample.path), sample_regions(sample, defects)))


def _perfect(sample, size, regions):
    amap = np.zeros(size, np.float32)
    for region in regions:
        amap[region.mask] = 1.0
    return amap


def test_perfect_maps_score_one_on_every_metric(small_loco, category, tmp_path, capsys):
    _write_maps(tmp_path / "maps", small_loco, category, _perfect)
    out = tmp_path / "metrics.json"
    code = main(["evaluate-maps", "--maps", str(tmp_path / "maps"), "--data", str(small_loco),
                 "--category", category, "--out", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    for key in METRICS:
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["n_test"] == 9


def test_random_maps_score_near_chance(small_loco, category, tmp_path):
    rng = np.random.default_rng(0)
    _write_maps(tmp_path / "maps", small_loco, category, lambda s, size, r: rng.random(size, dtype=np.float32))
    main(["evaluate-maps", "--maps", str(tmp_path / "maps"), "--data", str(small_loco), "--category", category,
          "--out", str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["pixel_auroc"] == pytest.approx(0.5, abs=0.02)
    assert metrics["aupro_0.3"] == pytest.approx(0.15, abs=0.05)  # random maps: PRO ~ FPR
    # sPRO saturates below a region's area, so chance lies above limit/2 but far below 1
    assert 0.01 < metrics["spro_0.05"] < 0.2


def test_maps_of_another_size_are_resized_to_the_original(small_loco, category, tmp_path):
    _write_maps(tmp_path / "maps", small_loco, category,
                lambda s, size, r: _perfect(s, size, r)[::2, ::2])
    code = main(["evaluate-maps", "--maps", str(tmp_path / "maps"), "--data", str(small_loco),
                 "--category", category, "--out", str(tmp_path / "m.json")])
    assert code == 0 and json.loads((tmp_path / "m.json").read_text())["pixel_auroc"] > 0.95


def test_a_missing_map_fails_with_its_expected_path(small_loco, category, tmp_path, capsys):
    _write_maps(tmp_path / "maps", small_loco, category, _perfect)
    sample = scan("mvtec_loco", small_loco, category, "test")[4]
    map_path(tmp_path / "maps", category, sample).unlink()
    code = main(["evaluate-maps", "--maps", str(tmp_path / "maps"), "--data", str(small_loco), "--category", category])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"{category}/test/{sample.defect}/{sample.image_id}.tiff" in err and "missing" in err
