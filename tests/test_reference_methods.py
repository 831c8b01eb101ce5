"""The two training-free reference methods (`patchcore`, `global_gaussian`): greedy coreset,
exact batched nearest-neighbour search, the Gaussian's Mahalanobis score and its patch shares,
saved models that score alone, the generic loop with no training stage, and real Ray Train
runs where 2 workers build exactly the state 1 worker builds."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from logicad.models import backbones
from logicad.models.base import build_method
from logicad.models.global_gaussian import fit_gaussian, ledoit_wolf_shrinkage, mahalanobis
from logicad.models.global_gaussian.scoring import descriptors, patch_shares
from logicad.models.patchcore import greedy_coreset, nearest, random_projection
from logicad.models.patchcore.network import aggregate, fixed_shape_forward
from logicad.pipelines.train.checkpoints import MODEL_FILE, load_model, read_model_file, save_model
from logicad.pipelines.train.worker import WorkerSpec, run_loop

from local_session import LocalSession
from images import square_images as _images
from registry_check import assert_registered_model_scores_alike

SMALL = {"image_size": 64, "backbone_weights": "random"}


def _build(name: str, **overrides):
    """`build_method` with the random backbone seeded (two builds hold the same weights)."""
    torch.manual_seed(0)
    return build_method(name, **overrides)


IMAGENET_MEAN = torch.tensor(backbones.IMAGENET_MEAN)[:, None, None]
IMAGENET_STD = torch.tensor(backbones.IMAGENET_STD)[:, None, None]


pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(images: torch.Tensor, batch: int = 4, order: list[int] | None = None) -> list[dict]:
    """Statistics batches carrying dataset indices, in `order` (default: dataset order)."""
    order = list(range(len(images))) if order is None else order
    return [{"image": images[order[i:i + batch]], "index": torch.tensor(order[i:i + batch]),
             "label": torch.zeros(len(order[i:i + batch]), dtype=torch.long)} for i in range(0, len(order), batch)]


# --- coreset ------------------------------------------------------------------------------
def _brute_force_k_center(points: torch.Tensor, count: int, start: int) -> list[int]:
    """Greedy k-center by definition: each step the point whose distance to its nearest chosen
    point is largest, from the full distance matrix."""
    chosen = [start]
    full = torch.cdist(points.double(), points.double())
    while len(chosen) < count:
        chosen.append(int(full[:, chosen].min(dim=1).values.argmax()))
    return chosen


def test_coreset_is_the_greedy_k_center_selection():
    points = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))
    picked = greedy_coreset(points, 12, seed=3)
    assert picked.tolist() == _brute_force_k_center(points, 12, int(picked[0]))
    assert torch.equal(greedy_coreset(points, 12, seed=3), picked)  # seeded: deterministic
    assert greedy_coreset(points, 60).tolist() == list(range(60))


def test_greedy_k_center_covers_within_twice_the_optimal_radius():
    points = torch.randn(10, 3, generator=torch.Generator().manual_seed(2)).double()
    full = torch.cdist(points, points)

    def radius(chosen) -> float:
        return float(full[:, list(chosen)].min(dim=1).values.max())

    optimum = min(radius(c) for c in itertools.combinations(range(10), 3))
    assert radius(greedy_coreset(points, 3, seed=0).tolist()) <= 2 * optimum + 1e-9


def test_random_projection_is_seeded_and_skipped_when_it_would_not_shrink():
    x = torch.randn(20, 40)
    assert torch.equal(random_projection(x, 16, 5), random_projection(x, 16, 5))
    assert random_projection(x, 16, 5).shape == (20, 16)
    assert random_projection(x, 64, 5) is x and random_projection(x, 0, 5) is x


# --- nearest neighbours -------------------------------------------------------------------
@pytest.mark.parametrize("block", [100, 1000, 2 ** 24])
def test_nearest_neighbour_search_is_exact_in_every_block_size(block):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 16, generator=g), torch.randn(300, 16, generator=g)
    distances, index = nearest(queries, bank, block_elements=block)
    reference = torch.cdist(queries.double(), bank.double())
    assert torch.equal(index, reference.argmin(dim=1))
    torch.testing.assert_close(distances.double(), reference.min(dim=1).values, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(distances, torch.cdist(queries, bank).min(dim=1).values, rtol=1e-5, atol=1e-5)


def test_nearest_distance_has_no_cancellation_error_near_a_bank_row():
    bank = 100.0 + torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
    queries = bank[:5] + 1e-3
    distances, index = nearest(queries, bank)
    assert index.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(distances, torch.full((5,), 1e-3 * 32 ** 0.5), rtol=1e-2, atol=0)


# --- PatchCore ----------------------------------------------------------------------------
def test_patchcore_bank_is_the_coreset_of_every_training_patch_in_dataset_order():
    images = _images(10)
    method = _build("patchcore", **SMALL, coreset_ratio=0.25)
    method.prepare(_loader(images))
    levels = fixed_shape_forward(method.backbone, images, method.config.batch_size)
    patches = aggregate(levels, 3).permute(0, 2, 3, 1).reshape(-1, method.channels)
    assert int(method.bank_source_rows) == patches.shape[0] == 10 * 8 * 8
    assert method.memory_bank.shape == (160, method.channels)
    keep = greedy_coreset(random_projection(patches, 128, 0), 160, 0)
    assert torch.equal(method.memory_bank, patches[keep])
    shuffled = _build("patchcore", **SMALL, coreset_ratio=0.25)
    shuffled.prepare(_loader(images, batch=3, order=[7, 2, 9, 0, 4, 1, 8, 3, 6, 5]))
    assert torch.equal(shuffled.memory_bank, method.memory_bank)


def test_patchcore_maps_are_nearest_bank_distances_resized_to_the_image():
    images = _images(8)
    method = _build("patchcore", **SMALL, coreset_ratio=1.0)
    method.prepare(_loader(images))
    method.eval()
    assert float(method.patch_scores(images[:2]).max()) < 1e-3  # every training patch is in the bank
    test = _images(3, seed=5)
    feats = method.patch_features(test).permute(0, 2, 3, 1).reshape(-1, method.channels)
    expected = torch.cdist(feats, method.memory_bank).min(dim=1).values.reshape(3, 1, 8, 8)
    torch.testing.assert_close(method.patch_scores(test), expected, rtol=1e-5, atol=1e-5)
    maps, scores = method.score(test)
    assert maps.shape == (3, 1, 64, 64)
    torch.testing.assert_close(scores, maps.flatten(1).amax(dim=1))
    with pytest.raises(ValueError, match="64 x 64"):
        method.anomaly_map(torch.zeros(1, 3, 32, 32))


def test_patchcore_without_a_bank_refuses_to_score():
    method = _build("patchcore", **SMALL).eval()
    with pytest.raises(RuntimeError, match="before prepare"):
        method.anomaly_map(_images(1))


def test_saved_patchcore_resizes_its_bank_and_scores_identically(tmp_path):
    images = _images(6)
    method = _build("patchcore", **SMALL)
    method.prepare(_loader(images))
    method.eval()
    save_model(tmp_path / MODEL_FILE, method)
    loaded = load_model(tmp_path)
    assert loaded.memory_bank.shape == method.memory_bank.shape != (0, method.channels)
    test = _images(4, seed=9)
    for got, want in zip(loaded.score(test), method.score(test)):
        assert torch.equal(got, want)


def test_config_keys_are_checked():
    from logicad.models.base import ConfigError

    with pytest.raises(ConfigError, match="coreset_ratio"):
        _build("patchcore", **SMALL, coreset_ratio=0.0)
    with pytest.raises(ConfigError, match="image_size"):
        build_method("global_gaussian", image_size=80, backbone_weights="random")
    with pytest.raises(ConfigError, match="map_mode"):
        _build("global_gaussian", **SMALL, map_mode="blur")


# --- global Gaussian ----------------------------------------------------------------------
def test_ledoit_wolf_matches_its_definition_in_scikit_learn():
    from sklearn.covariance import LedoitWolf

    rows = torch.randn(30, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * torch.linspace(
        0.5, 3, 50, dtype=torch.float64)
    reference = LedoitWolf().fit(rows.numpy())
    assert ledoit_wolf_shrinkage(rows - rows.mean(0)) == pytest.approx(reference.shrinkage_, rel=1e-10)
    mean, precision, _ = fit_gaussian(rows)
    torch.testing.assert_close(mean, torch.from_numpy(reference.location_))
    torch.testing.assert_close(precision, torch.from_numpy(reference.precision_), rtol=1e-6, atol=1e-8)
    queries = torch.randn(5, 50, dtype=torch.float64)
    torch.testing.assert_close(mahalanobis(queries, mean, precision) ** 2,
                               torch.from_numpy(reference.mahalanobis(queries.numpy())), rtol=1e-6, atol=1e-8)


def test_global_gaussian_score_is_the_mahalanobis_distance_to_the_fitted_gaussian():
    train, test = _images(12), _images(4, seed=7)
    method = _build("global_gaussian", **SMALL)
    method.prepare(_loader(train))
    method.eval()
    rows = descriptors(method.backbone(train))
    centred = rows - rows.mean(0)
    cov = centred.T @ centred / rows.shape[0]
    s = ledoit_wolf_shrinkage(centred)
    cov = (1 - s) * cov + s * torch.diagonal(cov).mean() * torch.eye(cov.shape[0], dtype=torch.float64)
    diff = descriptors(method.backbone(test)) - rows.mean(0)
    direct = (diff * torch.linalg.solve(cov, diff.T).T).sum(dim=1).sqrt()
    maps, scores = method.score(test)
    torch.testing.assert_close(scores.double(), direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.image_score(maps), scores)  # each map's maximum is the distance
    squared, shares = patch_shares(method.backbone(test), "mean_max", method.mean, method.precision)
    torch.testing.assert_close(shares.sum(dim=(1, 2, 3)), squared)  # the map's shares add up to d^2
    method.config = method.config.replace(map_mode="uniform")
    parts = method.score_parts(test)
    uniform_maps, uniform_scores = method.scores_from_parts(parts)
    assert torch.equal(uniform_scores, scores) and float(uniform_maps.std(dim=(2, 3)).max()) == 0.0


def _scene(count: int, g: torch.Generator, size: int = 64, side: int = 12) -> torch.Tensor:
    """A grey image with `count` red squares anywhere (not overlapping), ImageNet-normalised."""
    x = torch.full((3, size, size), 0.5) + 0.02 * torch.randn(3, size, size, generator=g)
    placed: list[tuple[int, int]] = []
    while len(placed) < count:
        r, c = (int(v) for v in torch.randint(2, size - side - 2, (2,), generator=g))
        if all(abs(r - a) > side + 2 or abs(c - b) > side + 2 for a, b in placed):
            placed.append((r, c))
            x[:, r:r + side, c:c + side] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    return (x.clamp(0, 1) - IMAGENET_MEAN) / IMAGENET_STD


def _auroc(normal: torch.Tensor, anomalous: torch.Tensor) -> float:
    return float((anomalous[:, None] > normal[None, :]).double().mean())


def test_global_gaussian_on_imagenet_features_ranks_a_missing_or_extra_part_above_normals():
    """Two parts anywhere is normal; one (missing) or three (extra) is not: no single patch
    breaks the rule, the count does."""
    g = torch.Generator().manual_seed(0)
    train = torch.stack([_scene(2, g) for _ in range(64)])
    normal, missing, extra = (torch.stack([_scene(n, g) for _ in range(6)]) for n in (2, 1, 3))
    method = build_method("global_gaussian", image_size=64, backbone_weights="imagenet-lite0")
    method.prepare([{"image": train}])
    method.eval()
    scores = {name: method.score(x)[1] for name, x in
              (("normal", normal), ("missing", missing), ("extra", extra))}
    assert _auroc(scores["normal"], scores["missing"]) >= 0.85
    assert _auroc(scores["normal"], scores["extra"]) >= 0.85


# --- the generic loop without a training stage ---------------------------------------------


@pytest.mark.parametrize("name", ["patchcore", "global_gaussian"])
def test_the_loop_runs_statistics_only_and_resumes_a_finished_run(name, small_loco, category, tmp_path, capsys):
    spec = WorkerSpec(method=name, config=SMALL, dataset="mvtec_loco", data_root=str(small_loco),
                      category=category, evaluate=False)
    session = LocalSession()
    run_loop(spec, session)
    assert "statistics only" in capsys.readouterr().out
    (metrics, payload), = session.reports
    training = payload["training"]
    assert metrics["final"] and metrics["step"] == 0 and metrics["replica_divergence"] == 0.0
    assert training["finished"] and "optimizers" not in training and training["train_images_per_second"] is None
    torch.save(payload, tmp_path / MODEL_FILE)
    again = LocalSession(tmp_path)
    run_loop(spec, again)  # resumes the finished run: nothing to compute, the state as saved
    (_, resumed), = again.reports
    for key, value in payload["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value)


# --- real Ray Train: 2 workers build what 1 builds; registered models score alone -------------
TINY = ["image_size=64", "backbone_weights=random", "batch_size=2", "precision=32"]


@pytest.fixture(scope="module")
def ray_runs(small_loco, category, tmp_path_factory):
    """For each method: a 2-worker and a 1-worker run on the same data (the 1-worker one
    registered). Workers run one thread each, so both runs compute bit-identical features
    (CPU kernels' results depend on the thread count by ~1e-5)."""
    import ray

    from logicad.pipelines.config import resolve_config
    from logicad.pipelines.train.driver import TrainJob, run_train

    tmp = tmp_path_factory.mktemp("reference_train")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    runs = {}
    try:
        for name in ("patchcore", "global_gaussian"):
            def job(run, workers, register):
                return TrainJob(name, resolve_config(name, TINY), "mvtec_loco", str(small_loco), category,
                                output_dir=str(tmp / f"{name}_{run}"), storage_path=str(tmp / "ray"),
                                run_name=f"{name}_{run}", tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                                log_every=1, workers=workers, register=register)

            runs[name] = (run_train(job("two", 2, False)), run_train(job("one", 1, True)))
    finally:
        ray.shutdown()
    return tmp, runs


@pytest.mark.parametrize("name", ["patchcore", "global_gaussian"])
def test_two_workers_build_exactly_the_state_one_worker_builds(ray_runs, name):
    _, runs = ray_runs
    two, one = runs[name]
    two_state = read_model_file(Path(two["run_dir"]) / "model")["state_dict"]
    one_state = read_model_file(Path(one["run_dir"]) / "model")["state_dict"]
    assert two_state.keys() == one_state.keys()
    for key in one_state:
        assert torch.equal(two_state[key], one_state[key]), key
    statistic = one_state["memory_bank" if name == "patchcore" else "precision"]
    assert statistic.numel() > 0 and float(statistic.abs().sum()) > 0
    if name == "patchcore":  # 6 training images x 8 x 8 patches, 10 % kept
        assert int(one_state["bank_source_rows"]) == 384 and one_state["memory_bank"].shape[0] == 38
    assert two["replica_divergence"] == 0.0 and one["replica_divergence"] == 0.0


@pytest.mark.parametrize("name", ["patchcore", "global_gaussian"])
def test_registered_model_reloads_in_a_fresh_process_with_the_same_scores(ray_runs, name, small_loco, category):
    tmp, runs = ray_runs
    _, one = runs[name]
    assert_registered_model_scores_alike(one["model_uri"], Path(one["run_dir"]) / "model", tmp / "mlflow.db",
                                         small_loco, category)
