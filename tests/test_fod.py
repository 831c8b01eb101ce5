"""FOD: target correlation, sigma bound, KL, minimax gradient routing, per-image scoring,
the feature cache, config errors; reference statistics under 2 Ray Train workers and a
registered model reloaded in a fresh process."""

from __future__ import annotations


import logicad.models  # noqa: F401  (torchvision op schemas before timm)
import pytest
from pathlib import Path
import torch
from logicad.models.base import ConfigError, build_method, method_class
from logicad.models.feature_cache import FeatureCache
from logicad.models.fod import loss as L
from logicad.models.fod import scoring
from logicad.models.fod.network import (CorrelationBranch, I2CorrelationLayer, sigma_bound, squared_offsets,
                                        target_correlation)

from images import square_images as _images
from registry_check import assert_registered_model_scores_alike

SMALL = {"backbone": "resnet18", "image_size": 64, "d_model": (32, 64), "heads": 2, "layers": 2,
         "batch_size": 2, "max_steps": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**overrides):
    torch.manual_seed(0)
    return build_method("fod", **{**SMALL, **overrides})




def _prepared(**overrides):
    model = _model(**overrides)
    images = _images(4)
    model.prepare([{"image": images, "label": torch.zeros(4), "index": torch.arange(4)}])
    return model, images


def test_target_rows_sum_to_one_and_peak_at_the_querys_own_position():
    dy2, dx2 = squared_offsets(5, 6)
    sigma = torch.rand(2, 3, 30, 2) * 1.9 + 0.1
    t = target_correlation(sigma, dy2, dx2)
    assert t.shape == (2, 3, 30, 30)
    torch.testing.assert_close(t.sum(-1), torch.ones(2, 3, 30))
    assert torch.equal(t.argmax(-1), torch.arange(30).expand(2, 3, 30))


def test_sigma_stays_within_its_bound():
    torch.manual_seed(0)
    branch = CorrelationBranch(16, 2)
    dy2, dx2 = squared_offsets(4, 4)
    for scale in (0.0, 1.0, 1e3, -1e3):
        x = torch.randn(2, 16, 16) * scale
        _, corr = branch(x, x, dy2, dx2)
        assert corr.sigma.shape == (2, 2, 16, 2)
        assert bool((corr.sigma > 0).all()) and bool((corr.sigma <= sigma_bound() + 1e-6).all())
    assert sigma_bound() == pytest.approx(2.0, abs=1e-4)


def test_kl_is_zero_when_attention_equals_the_target():
    p = torch.softmax(torch.randn(2, 3, 7, 7), dim=-1)
    assert float(L.symmetric_kl_rows(p, p).abs().max()) == 0.0
    q = torch.softmax(torch.randn(2, 3, 7, 7), dim=-1)
    assert bool((L.symmetric_kl_rows(p, q) > 0).all())


def test_loss1_moves_sigma_only_and_loss2_moves_attention_only_through_the_correlation_terms():
    model, images = _prepared(layers=1)
    out = model.forward_levels(model.features(images))[0]
    rec = L.reconstruction_loss(out.recon, out.features)
    losses = L.minimax_losses(rec, out.intra, out.inter, 0.5, 0.5)
    watched = [c.sigma for c in (*out.intra, *out.inter)] + [c.logits for c in (*out.intra, *out.inter)]
    g1 = torch.autograd.grad(losses["loss1"] - rec, watched, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(losses["loss2"] - rec, watched, allow_unused=True)

    def norm(g):
        return 0.0 if g is None else float(g.abs().sum())

    sigmas, logits = slice(0, 2), slice(2, 4)
    assert all(norm(g) > 0 for g in g1[sigmas]) and all(norm(g) == 0 for g in g1[logits])
    assert all(norm(g) == 0 for g in g2[sigmas]) and all(norm(g) > 0 for g in g2[logits])


def test_fused_training_loss_has_the_value_and_gradients_of_loss1_plus_loss2():
    model, images = _prepared()
    features = [f.double() for f in model.features(images)]
    model = model.double()
    outs = model.forward_levels(features)
    literal, fused = 0.0, 0.0
    for out in outs:
        rec = L.reconstruction_loss(out.recon, out.features)
        pair = L.minimax_losses(rec, out.intra, out.inter, 0.5, 0.5)
        literal = literal + pair["loss1"] + pair["loss2"]
        fused = fused + L.fused_minimax(rec, out.intra, out.inter, 0.5, 0.5)["loss"]
    params = list(model.levels.parameters())
    g_literal = torch.autograd.grad(literal, params, retain_graph=True)
    g_fused = torch.autograd.grad(fused, params)
    assert float(fused.detach()) == pytest.approx(float(literal.detach()), rel=1e-10)
    scale = max(float(g.abs().max()) for g in g_literal)
    for a, b in zip(g_literal, g_fused):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7 * scale)


def test_training_steps_lower_the_reconstruction_and_leave_the_backbone_frozen():
    model, images = _prepared()
    stage = model.stages()[0]
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    batch = {"image": images[:2], "index": torch.arange(2)}
    recs = []
    for _ in range(6):
        out = model(batch, stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        stage.optimizer.step()
        recs.append(float(out["rec"]))
    assert recs[-1] < recs[0]
    assert {"loss", "loss1", "loss2", "rec", "kl_intra", "kl_inter", "entropy_intra", "entropy_inter"} <= set(out)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, frozen[key]), key


@pytest.mark.parametrize("overrides", [{}, {"intra_only": True}, {"score_mode": "rec_only"}])
def test_batch_one_and_batch_four_give_the_same_maps(overrides):
    model, images = _prepared(**overrides)
    model.eval()
    maps = model.anomaly_map(images)
    singles = torch.cat([model.anomaly_map(images[i:i + 1]) for i in range(4)])
    assert maps.shape == (4, 1, 64, 64)
    torch.testing.assert_close(maps, singles, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.image_score(maps), torch.cat([model.image_score(m[None]) for m in singles]))


def test_intra_only_layer_keeps_the_residual_that_two_branches_cancel():
    torch.manual_seed(0)
    dy2, dx2 = squared_offsets(3, 3)
    x, ref = torch.randn(2, 9, 16), torch.randn(1, 9, 16)
    for intra_only in (True, False):
        layer = I2CorrelationLayer(16, 2, 2, residual=False, intra_only=intra_only)
        out, _, _ = layer(x, ref, dy2, dx2)
        z = layer.intra(x, x, dy2, dx2)[0]
        z = z + x if intra_only else z - layer.inter(x, ref, dy2, dx2)[0]
        z = layer.norm1(z)
        torch.testing.assert_close(out, layer.norm2(z + layer.ffn(z)))


def test_inter_kl_weights_large_divergence_up_and_intra_kl_weights_small_divergence_up():
    rec = torch.ones(1, 2, 2)
    kl = torch.tensor([[[0.0, 1.0], [2.0, 8.0]]])
    inter = scoring.weighted(rec, kl, "full", inter=True).flatten()
    intra = scoring.weighted(rec, kl, "full", inter=False).flatten()
    assert inter.argmax() == 3 and float(inter[0]) == 0.0  # least like the target: most anomalous
    assert intra.argmax() == 0  # most like the local target although trained away from it
    torch.testing.assert_close(intra.sum(), torch.tensor(1.0))
    assert torch.equal(scoring.weighted(rec, kl, "rec_only"), rec)


def test_token_projections_start_at_kaiming_fan_in_scale():
    torch.manual_seed(0)
    level = _model().levels[0]
    fan_in = level.embed.in_features
    for layer in (level.embed, level.ref_embed):
        assert float(layer.weight.std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)


def test_image_score_is_the_maximum_of_the_smoothed_map():
    model, _ = _prepared()
    maps = torch.zeros(2, 1, 64, 64)
    maps[0, 0, 30, 30] = 1.0  # one hot pixel: smoothing spreads it
    maps[1, 0, 20:44, 20:44] = 0.5  # a wide plateau keeps its height
    scores = model.image_score(maps)
    assert float(scores[0]) < 0.02 and float(scores[1]) == pytest.approx(0.5, abs=0.02)


def test_cached_features_equal_freshly_computed_ones():
    model, images = _prepared()
    assert len(model.cache) == 4  # prepare filled it
    fresh = model.features(images)
    cached = model._training_features({"index": torch.arange(4)}, images)
    for a, b in zip(fresh, cached):
        assert torch.equal(a, b)
    assert model.cache.hits >= 4
    other = _images(4, seed=5)  # same indices, other images: recomputed, never stale
    for a, b in zip(model.features(other), model._training_features({"index": torch.arange(4)}, other)):
        assert torch.equal(a, b)


def test_feature_cache_keeps_to_its_budget():
    cache = FeatureCache(budget_bytes=2 * 4 * 10)  # two rows of 10 float32
    images = torch.randn(4, 3, 8, 8)
    out = cache.lookup(images, torch.arange(4), lambda x: (x.flatten(1)[:, :10],))
    assert out[0].shape == (4, 10) and len(cache) == 2 and cache.used <= cache.budget
    again = cache.lookup(images, torch.arange(4), lambda x: (x.flatten(1)[:, :10],))
    torch.testing.assert_close(again[0], out[0], rtol=0, atol=0)
    assert cache.hits == 2


def test_bad_config_keys_fail_with_the_valid_keys():
    cls = method_class("fod").config_cls
    with pytest.raises(ConfigError, match="unknown config key 'lambda3'.*lambda1.*lambda2"):
        cls.build({"lambda3": 1})
    with pytest.raises(ConfigError, match="score_mode.*full.*rec_only"):
        cls.build({"score_mode": "kl"})
    with pytest.raises(ConfigError, match="d_model"):
        cls.build({"d_model": "256"})
    with pytest.raises(ConfigError, match="preset.*cpu-synthetic"):
        cls.build(preset="gpu")
    defaults = cls()
    assert (defaults.backbone, defaults.strides, defaults.d_model, defaults.heads, defaults.layers) == (
        "efficientnet_b6", (8, 16), (256, 512), 8, 3)
    assert (defaults.lambda1, defaults.lambda2, defaults.lr, defaults.image_size, defaults.batch_size) == (
        0.5, 0.5, 1e-4, 256, 1)


def test_cpu_synthetic_preset_builds_with_the_shipped_imagenet_lite0_weights():
    from logicad.models.backbones import read_weights

    config = method_class("fod").config_cls.build(preset="cpu-synthetic")
    assert (config.backbone, config.backbone_weights) == ("tf_efficientnet_lite0", "imagenet-lite0")
    model = build_method("fod", config)
    imagenet = read_weights("tf_efficientnet_lite0", "imagenet-lite0")
    state = model.backbone.model.state_dict()
    assert "imagenet-lite0" in model.backbone.source
    assert state and all(torch.equal(v, imagenet[k]) for k, v in state.items())
    # strides map to lite0's levels: 8 -> 40 channels, 16 -> 112 (log2(s) - 1 = out_indices 2, 3)
    assert dict(zip(config.strides, model.backbone.channels)) == {8: 40, 16: 112}


def test_preset_backbone_gives_the_pooled_imagenet_lite0_features_of_normalised_images():
    import torch.nn.functional as F
    from logicad.models.backbones import create_backbone, renormaliser

    model = build_method("fod", method_class("fod").config_cls.build(preset="cpu-synthetic"))
    lite0, _ = create_backbone("tf_efficientnet_lite0", "imagenet-lite0", out_indices=(2, 3))
    lite0.eval()._forward_pre_hooks.clear()  # the bare network: it wants mean = std = 0.5 inputs
    renorm = renormaliser("tf_efficientnet_lite0")
    images = _images(2, size=model.config.image_size)  # ImageNet-normalised, as the data pipeline's
    with torch.no_grad():
        expected = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in lite0(renorm(images))]
        got = model.features(images)
    assert [tuple(f.shape[1:]) for f in got] == [(40, 16, 16), (112, 8, 8)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_saved_state_scores_alone():
    model, images = _prepared()
    model.eval()
    expected = model.image_score(model.anomaly_map(images))
    fresh = _model()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh.image_score(fresh.anomaly_map(images)), expected)


# --- Ray Train: 2 workers vs 1, registry reload ---------------------------------------------
TINY = ["backbone=resnet18", "image_size=64", "d_model=32,64", "heads=2", "layers=1", "batch_size=2",
        "max_steps=2", "precision=32"]


@pytest.fixture(scope="module")
def ray_runs(small_loco, category, tmp_path_factory):
    import ray

    from logicad.pipelines.config import resolve_config
    from logicad.pipelines.train.driver import TrainJob, run_train

    tmp = tmp_path_factory.mktemp("fod_train")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    try:
        def job(name, workers, register):
            return TrainJob("fod", resolve_config("fod", TINY), "mvtec_loco", str(small_loco), category,
                            output_dir=str(tmp / name), storage_path=str(tmp / "ray"), run_name=name,
                            tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", log_every=1, workers=workers,
                            register=register)

        two = run_train(job("two", 2, False))
        one = run_train(job("one", 1, True))
    finally:
        ray.shutdown()
    return tmp, one, two


def test_reference_statistics_of_two_workers_equal_one_workers(ray_runs):
    from logicad.pipelines.train.checkpoints import read_model_file

    _, one, two = ray_runs
    one_state = read_model_file(Path(one["run_dir"]) / "model")["state_dict"]
    two_state = read_model_file(Path(two["run_dir"]) / "model")["state_dict"]
    keys = [k for k in one_state if k.startswith("reference_")]
    assert len(keys) == 2 and float(one_state[keys[0]].abs().sum()) > 0
    for key in keys:
        torch.testing.assert_close(two_state[key], one_state[key], rtol=1e-6, atol=1e-7)
    assert two["replica_divergence"] == 0.0


def test_registered_model_reloads_in_a_fresh_process_with_the_same_scores(ray_runs, small_loco, category):
    tmp, one, _ = ray_runs
    assert_registered_model_scores_alike(one["model_uri"], Path(one["run_dir"]) / "model", tmp / "mlflow.db",
                                         small_loco, category)


def test_shipped_search_spaces_load_and_every_d_model_choice_fits_the_preset():
    from logicad.pipelines.tune.search_space import load_space

    root = Path(__file__).resolve().parent.parent / "tune_spaces"
    space = load_space(root / "fod.yaml", "fod")
    assert {"lambda1", "lambda2", "d_model", "lr"} <= set(space.space)
    cls = method_class("fod").config_cls
    for width in space.space["d_model"]["choice"]:
        cls.build({**space.fixed, "d_model": ",".join(map(str, width))}, preset=space.preset)
    ablation = load_space(root / "fod_ablation.yaml", "fod")
    assert set(ablation.space) == {"use_entropy", "intra_only", "score_mode"}
    assert all("grid" in spec for spec in ablation.space.values())
