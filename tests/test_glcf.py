"""GLCF: shapes per SAM variant, size and backbone; the frozen teacher; the distances; the
score-only fusion and the std image score; statistics under 2 Ray Train workers equal to
1; a registered model reloaded in a fresh process; config errors."""

from __future__ import annotations

from pathlib import Path

import logicad.models  # noqa: F401  (torchvision op schemas before timm)
import pytest
import torch
from logicad.models.backbones import read_weights, renormaliser
from logicad.models.base import Collective, ConfigError, build_method, method_class
from logicad.models.glcf import Teacher, lr_factor, scoring
from logicad.models.glcf import loss as L
from logicad.models.torchvision_ops import import_timm

from registry_check import assert_registered_model_scores_alike

#: a small trainable part around any teacher
SMALL = {"sb_dim": 32, "sb_heads": 2, "sb_depth": 1, "decoder_dim": 32, "decoder_heads": 2, "decoder_depth": 1,
         "up_depths": (1, 1, 1)}
CNN = {**SMALL, "backbone": "resnet18", "image_size": 64, "decoder": "resnet", "batch_size": 2, "max_steps": 3}


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _model(**overrides):
    torch.manual_seed(0)
    return build_method("glcf", **{**CNN, **overrides})


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _finalized(**overrides):
    model = _model(**overrides)
    model.finalize([{"image": _images(4, model.config.image_size), "label": torch.zeros(4)}])
    return model.eval()


# --- networks -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [224, 256])
@pytest.mark.parametrize("backbone, decoder, channels", [
    ("swin_tiny_patch4_window7_224", "swin", {4: 96, 8: 192, 16: 384, 32: 768}),
    ("resnet18", "resnet", {4: 64, 8: 128, 16: 256, 32: 512}),
])
@pytest.mark.parametrize("variant", ["ps", "pgs", "pss"])
def test_shapes_for_each_sam_variant_size_and_backbone(variant, backbone, decoder, channels, size):
    model = build_method("glcf", **SMALL, backbone=backbone, decoder=decoder, sam_variant=variant, image_size=size)
    images = _images(1, size)
    with torch.no_grad():
        taps = model.teacher(images)  # Swin's NHWC maps come out NCHW
        assert {s: tuple(t.shape) for s, t in taps.items()} == {
            s: (1, c, size // s, size // s) for s, c in channels.items()}
        grid = size // 32
        theta, omega = model.bottleneck({s: taps[s] for s in (8, 16, 32)})
        assert tuple(theta.shape) == tuple(omega.shape) == (1, channels[32], grid, grid)
        features = model.features(images)
    for net in ("phi_g", "psi_l", "psi_g"):
        assert {s: tuple(t.shape) for s, t in features[net].items()} == {
            s: (1, channels[s], size // s, size // s) for s in (4, 8, 16)}
    maps = model.anomaly_map(images)
    assert tuple(maps.shape) == (1, 1, size, size) and torch.isfinite(maps).all()


def test_semantic_tokens_follow_the_variant():
    tokens = {v: {n for n, _ in _model(sam_variant=v).bottleneck.named_parameters()
                  if n in ("semantic", "global_token", "decoder_semantic")} for v in ("ps", "pgs", "pss")}
    assert tokens == {"ps": {"semantic"}, "pgs": {"global_token", "decoder_semantic"},
                      "pss": {"semantic", "decoder_semantic"}}


def test_teacher_stays_frozen_and_in_eval_mode_through_training_steps():
    model = _model()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    trainable_before = [p.detach().clone() for p in model.bottleneck.parameters()]
    stage = model.stages()[0]
    model.train()
    for step in range(3):
        losses = model.training_step({"image": _images(2, seed=step)})
        stage.optimizer.zero_grad()
        losses["loss"].backward()
        stage.optimizer.step()
        assert not model.teacher.training and not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad or p.grad is not None for p in model.teacher.parameters())
    for key, value in model.teacher.state_dict().items():  # BN running statistics included
        assert torch.equal(value, teacher_before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(trainable_before, model.bottleneck.parameters()))
    assert set(losses) == {"loss", "l_el", "l_c", "l_eg"}


def test_lr_drops_tenfold_for_the_last_forty_percent():
    assert [lr_factor(s, 10, 0.4) for s in range(10)] == [1.0] * 6 + [0.1] * 4


# --- the cpu-synthetic preset's pretrained teacher --------------------------------------------
LITE0 = "tf_efficientnet_lite0"
LITE0_CHANNELS = {4: 24, 8: 40, 16: 112, 32: 320}


def _imagenet_lite0_features(images: torch.Tensor) -> dict[int, torch.Tensor]:
    """{stride: map} of timm's full tf_efficientnet_lite0 classifier with the shipped ImageNet
    weights loaded strictly, run block by block (no features_only wrapper, no hook): the output
    of the last block at each stride, from the ImageNet-normalised images renormalised by hand."""
    model = import_timm().create_model(LITE0)
    model.load_state_dict(read_weights(LITE0, "imagenet-lite0"), strict=True)
    model.eval()
    ends = {int(info["module"].split(".")[1]): info["reduction"] for info in model.feature_info
            if info["reduction"] >= 4}
    out = {}
    with torch.no_grad():
        x = model.bn1(model.conv_stem(renormaliser(LITE0)(images)))
        for index, block in enumerate(model.blocks):
            x = block(x)
            if index in ends:
                out[ends[index]] = x
    return out


def test_pretrained_lite0_teacher_taps_strides_4_to_32_with_the_imagenet_models_features():
    teacher = Teacher(LITE0, "imagenet-lite0", (4, 8, 16, 32), 128).eval()
    assert teacher.channels == LITE0_CHANNELS and "imagenet-lite0" in teacher.source
    images = _images(2, 128, seed=11)
    with torch.no_grad():
        got = teacher(images)
    expected = _imagenet_lite0_features(images)
    assert {s: tuple(t.shape) for s, t in got.items()} == {s: (2, c, 128 // s, 128 // s) for s, c in LITE0_CHANNELS.items()}
    for stride in LITE0_CHANNELS:
        torch.testing.assert_close(got[stride], expected[stride], rtol=1e-4, atol=1e-4)


def test_cpu_synthetic_preset_builds_with_the_shipped_weights_and_its_teacher_is_the_imagenet_model():
    config = method_class("glcf").config_cls.build(preset="cpu-synthetic")
    assert (config.backbone, config.backbone_weights) == (LITE0, "imagenet-lite0")
    assert len(config.scale_weights) == len(config.target_strides) == len(config.up_depths)
    torch.manual_seed(0)
    model = build_method("glcf", config).eval()
    assert "imagenet-lite0" in model.describe()[0]
    assert model.teacher.channels == {s: LITE0_CHANNELS[s] for s in model.teacher.strides}
    assert set(model.teacher.strides) == set(config.sb_strides) | set(config.target_strides)
    images = _images(2, config.image_size, seed=12)
    with torch.no_grad():
        got = model.teacher(images)
    expected = _imagenet_lite0_features(images)
    for stride, tensor in got.items():
        torch.testing.assert_close(tensor, expected[stride], rtol=1e-4, atol=1e-4)
    maps = model.anomaly_map(images)
    assert tuple(maps.shape) == (2, 1, config.image_size, config.image_size) and torch.isfinite(maps).all()


# --- loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["l2", "cos"])
def test_loss_is_zero_for_identical_features_and_positive_otherwise(kind):
    a = {s: torch.randn(2, 8, 64 // s, 64 // s) for s in (4, 8, 16)}
    b = {s: v + 0.1 * torch.randn_like(v) for s, v in a.items()}
    same = L.glcf_losses(a, a, a, a, kind)
    assert all(float(v) == pytest.approx(0.0, abs=1e-6) for v in same.values())
    differ = L.glcf_losses(a, b, a, a, kind)  # Phi_G off: l_C and l_E^G, not l_E^L
    assert float(differ["l_el"]) == pytest.approx(0.0, abs=1e-6)
    assert float(differ["l_c"]) > 0 and float(differ["l_eg"]) > 0


def test_l2_distance_is_the_squared_error_averaged_over_channels_and_positions():
    a, b = torch.randn(2, 5, 7, 7), torch.randn(2, 5, 7, 7)
    assert float(L.distance(a, b, "l2")) == pytest.approx(float((a - b).pow(2).mean()), rel=1e-6)


# --- scoring --------------------------------------------------------------------------------
def test_anomaly_map_is_the_fusion_of_the_score_parts_and_weights_change_only_the_fusion(monkeypatch):
    model = _finalized()
    images = _images(3, seed=5)
    parts = model.score_parts(images)
    assert set(parts) == {f"{b}_s{s}" for b in ("local", "global") for s in (4, 8, 16)}
    assert torch.equal(model.anomaly_map(images), model.maps_from_parts(parts))
    fused = model.maps_from_parts(parts)
    monkeypatch.setattr(model, "features", lambda *a, **k: pytest.fail("networks recomputed"))
    model.config = model.config.replace(w_global=3.0)
    assert not torch.allclose(model.maps_from_parts(parts), fused)


def test_fusion_with_w_global_zero_equals_the_local_only_map():
    model = _finalized()
    parts = model.score_parts(_images(3, seed=6))
    model.config = model.config.replace(w_global=0.0)
    no_global = model.maps_from_parts(parts)
    model.config = model.config.replace(w_global=1.0, branches="local")
    assert torch.equal(model.maps_from_parts(parts), no_global)
    c = model.config  # and by hand: the smoothed sum over scales of K_i * W_L * up(A_L^i)
    manual = sum(k * c.w_local * scoring.upsample(parts[f"local_s{s}"], 64) for s, k in zip((4, 8, 16), c.scale_weights))
    torch.testing.assert_close(no_global, scoring.gaussian_blur(manual, c.smoothing_sigma))


def test_image_score_is_the_maps_standard_deviation():
    model = _finalized()
    maps = model.anomaly_map(_images(3, seed=7))
    expected = torch.stack([m.flatten().std(correction=0) for m in maps])
    torch.testing.assert_close(model.image_score(maps), expected)


def test_gaussian_blur_keeps_constants_and_mass():
    flat = torch.full((1, 1, 40, 40), 3.0)
    torch.testing.assert_close(scoring.gaussian_blur(flat, 4.0), flat)
    spike = torch.zeros(1, 1, 65, 65)
    spike[..., 32, 32] = 1.0
    blurred = scoring.gaussian_blur(spike, 4.0)
    assert float(blurred.sum()) == pytest.approx(1.0, rel=1e-5) and float(blurred.max()) < 0.02


def test_finalize_statistics_are_per_image_means_of_the_smoothed_maps_also_over_two_workers():
    model = _model()
    images = _images(4, seed=8)
    model.finalize([{"image": images[:2]}, {"image": images[2:]}])
    raw = model.raw_maps(images)
    local_s8 = scoring.gaussian_blur(scoring.upsample(raw["local", 8], 64), 4.0).flatten(1)
    torch.testing.assert_close(model.stats[0, 1], torch.stack([local_s8.mean(1).mean(), local_s8.std(1, correction=0).mean()]))
    one = model.stats.clone()

    other = _model()  # the same weights (same seed)
    recorder = _Recording()
    other.finalize([{"image": images[2:]}], recorder)  # worker 1's sums
    model.finalize([{"image": images[:2]}], _Adding(recorder.seen))  # worker 0, all-reduced
    torch.testing.assert_close(model.stats, one)


class _Recording(Collective):
    def sum(self, tensor):
        self.seen = tensor.clone()
        return tensor


class _Adding(Collective):
    """Worker 0 of two: the other worker's sums are added in."""

    def __init__(self, other):
        self.other = other

    def sum(self, tensor):
        return tensor + self.other


def test_state_dict_round_trip_scores_identically():
    model = _finalized()
    images = _images(2, seed=9)
    fresh = _model()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert bool(fresh.finalized)
    torch.testing.assert_close(fresh.image_score(fresh.anomaly_map(images)), model.image_score(model.anomaly_map(images)))


# --- config ---------------------------------------------------------------------------------
def test_defaults_are_the_papers_and_bad_keys_fail_with_the_valid_list():
    cls = method_class("glcf").config_cls
    d = cls()
    assert (d.backbone, d.sb_strides, d.target_strides, d.sam_variant, d.sb_dim, d.sb_depth, d.sb_heads,
            d.decoder_depth, d.decoder_heads, d.distance, d.w_local, d.w_global, d.scale_weights,
            d.smoothing_sigma, d.lr, d.betas, d.weight_decay, d.batch_size, d.image_size) == (
        "swin_tiny_patch4_window7_224", (8, 16, 32), (4, 8, 16), "pss", 240, 6, 12, 6, 16, "l2", 5.0, 1.0,
        (1.0, 3.0, 6.0), 4.0, 1e-4, (0.9, 0.95), 0.01, 8, 224)
    assert cls.SCORE_ONLY == ("w_local", "w_global", "scale_weights", "branches")
    with pytest.raises(ConfigError, match="unknown config key 'w_logical'.*w_local.*w_global"):
        cls.build({"w_logical": 1})
    with pytest.raises(ConfigError, match="sam_variant.*'ps', 'pgs', 'pss'"):
        cls.build({"sam_variant": "pgg"})
    with pytest.raises(ConfigError, match="scale_weights.*3 values"):
        cls.build({"scale_weights": "1,3"})
    with pytest.raises(ConfigError, match="target_strides"):
        cls.build({"target_strides": "4,16"})
    with pytest.raises(ConfigError, match="image_size.*32"):
        cls.build({"image_size": 100})
    with pytest.raises(ConfigError, match="preset.*cpu-synthetic"):
        cls.build(preset="gpu")
    with pytest.raises(ConfigError, match="backbone.*no_such_net"):
        build_method("glcf", **{**CNN, "backbone": "no_such_net"})


def test_a_missing_weights_file_fails_training_but_not_loading_a_saved_model(tmp_path):
    model = _model(backbone_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(Exception, match="missing.pth"):
        model.prepare([])
    model.load_state_dict(_model().state_dict())
    model.prepare([])  # the teacher now comes from the state dict


# --- Ray Train: 2 workers vs 1, registry reload ----------------------------------------------
TINY = ["backbone=resnet18", "image_size=64", "sb_dim=32", "sb_heads=2", "sb_depth=1", "decoder_dim=32",
        "decoder_heads=2", "decoder_depth=1", "decoder=swin", "up_depths=1,1,1", "max_steps=2", "lr=1e-3",
        "precision=32"]


@pytest.fixture(scope="module")
def ray_runs(small_loco, category, tmp_path_factory):
    """2 workers at batch 1 and 1 worker at batch 2: the same images per step (the distributed
    sampler interleaves one permutation), LayerNorm-only decoders, so the same weights."""
    import ray

    from logicad.pipelines.config import resolve_config
    from logicad.pipelines.train.driver import TrainJob, run_train

    tmp = tmp_path_factory.mktemp("glcf_train")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    try:
        def job(name, workers, batch, register):
            return TrainJob("glcf", resolve_config("glcf", [*TINY, f"batch_size={batch}"]), "mvtec_loco",
                            str(small_loco), category, output_dir=str(tmp / name), storage_path=str(tmp / "ray"),
                            run_name=name, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", log_every=1,
                            workers=workers, register=register)

        two = run_train(job("two", 2, 1, False))
        one = run_train(job("one", 1, 2, True))
    finally:
        ray.shutdown()
    return tmp, one, two


def test_statistics_of_two_workers_equal_one_workers(ray_runs):
    from logicad.pipelines.train.checkpoints import read_model_file

    _, one, two = ray_runs
    one_state = read_model_file(Path(one["run_dir"]) / "model")["state_dict"]
    two_state = read_model_file(Path(two["run_dir"]) / "model")["state_dict"]
    assert bool(one_state["finalized"]) and bool(two_state["finalized"])
    assert not torch.equal(one_state["stats"][..., 1], torch.ones_like(one_state["stats"][..., 1]))
    torch.testing.assert_close(two_state["stats"], one_state["stats"], rtol=1e-4, atol=1e-6)
    assert two["replica_divergence"] == 0.0


def test_registered_model_reloads_in_a_fresh_process_with_the_same_scores(ray_runs, small_loco, category):
    tmp, one, _ = ray_runs
    assert_registered_model_scores_alike(one["model_uri"], Path(one["run_dir"]) / "model", tmp / "mlflow.db",
                                         small_loco, category)
