"""SLSG: inpainting masks, the SG block's sparse graph, shapes, GAN gradient routing, the
stage hand-over, and (on a real Ray runtime) resume inside stage 2, DDP replicas, registry reload."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import logicad.models  # noqa: F401  (torchvision op schemas before timm)
import pytest
import torch

from logicad.models.backbones import BackboneWeightsError
from logicad.models.base import ConfigError, build_method
from logicad.models.slsg import SIMULATION_KEYS, SLSG, SLSGConfig, cosine_factor
from logicad.models.slsg.masking import grid_masks, inpainting_masks
from logicad.models.slsg.sg_block import sincos_position_encoding, sparse_neighbours

from registry_check import assert_registered_model_scores_alike

TINY = dict(image_size=64, batch_size=2, gpt_batch_size=2, gpt_steps=2, seg_steps=2, max_steps=4, precision="32")


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _model(**overrides) -> SLSG:
    torch.manual_seed(0)
    return build_method("slsg", SLSGConfig.build({**TINY, **overrides}))


def _seg_batch(n: int, size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, size, size)
    mask[:, size // 4:size // 2, size // 4:size // 2] = 1.0
    return {"image": torch.randn(n, 3, size, size, generator=g),
            "simulated": torch.randn(n, 3, size, size, generator=g), "simulated_mask": mask}


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.8, 1.0])
def test_grid_masks_mask_exactly_the_mask_ratio_of_patches(ratio):
    masks = grid_masks(5, 64, 8, ratio, torch.Generator().manual_seed(0))
    assert masks.shape == (5, 1, 64, 64)
    cells = masks[:, 0, ::8, ::8]  # one pixel per 8 x 8 patch
    assert (cells.flatten(1).sum(1) == round(ratio * 64)).all()
    assert torch.equal(masks, cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None])  # whole patches


def test_method_masks_honour_mask_ratio_and_add_large_rectangles_scaled_with_image_size():
    model = _model(large_mask_count=0)
    masks = model.inpainting_masks(4, 64)
    assert torch.allclose(masks.mean(dim=(1, 2, 3)), torch.full((4,), round(0.8 * 64) / 64))
    rect_only = inpainting_masks(200, 64, 8, 0.0, 40 * 64 / 256, 150 * 64 / 256, 1, torch.Generator().manual_seed(1))
    rows, cols = rect_only[:, 0].amax(2).sum(1), rect_only[:, 0].amax(1).sum(1)
    assert rows.min() >= 10 and rows.max() <= 38 and cols.min() >= 10 and cols.max() <= 38
    with_rects = _model().inpainting_masks(4, 64)
    assert (with_rects.mean(dim=(1, 2, 3)) >= masks.mean(dim=(1, 2, 3))).all()


def test_masks_of_a_step_are_fixed_by_seed_and_step():
    a, b = _model(), _model()
    assert torch.equal(a.inpainting_masks(2, 64), b.inpainting_masks(2, 64))
    a.after_step("gpt")
    assert not torch.equal(a.inpainting_masks(2, 64), b.inpainting_masks(2, 64))


# ---------------------------------------------------------------------------- SG block
def test_sparse_neighbours_drop_position_similar_nodes_when_the_subtraction_is_on():
    h = w = 16
    position = sincos_position_encoding(h, w, 64)
    g = torch.Generator().manual_seed(0)
    # features that vary smoothly in space (nearby nodes look alike) plus a little noise
    features = (position + 0.3 * torch.randn(h * w, 64, generator=g))[None]
    ys, xs = torch.arange(h * w) // w, torch.arange(h * w) % w

    def mean_distance(index):
        dy = (ys[index[0]] - ys[:, None]).float()
        dx = (xs[index[0]] - xs[:, None]).float()
        return (dy ** 2 + dx ** 2).sqrt().mean().item()

    def mean_position_similarity(index):
        pn = torch.nn.functional.normalize(position, dim=-1)
        return (pn @ pn.t()).gather(1, index[0]).mean().item()

    plain = sparse_neighbours(features, 9, None)
    subtracted = sparse_neighbours(features, 9, position)
    assert plain.shape == subtracted.shape == (1, h * w, 9)
    assert mean_distance(subtracted) > 2 * mean_distance(plain)
    assert mean_position_similarity(subtracted) < mean_position_similarity(plain)


def test_sg_block_graph_uses_the_subtraction_key():
    on, off = _model(image_size=128), _model(image_size=128, pos_subtract=False)
    off.load_state_dict(on.state_dict())
    x = torch.randn(1, 512, 8, 8)
    on.eval(), off.eval()
    assert not torch.equal(on.segnet.bottleneck.neighbours(x), off.segnet.bottleneck.neighbours(x))


# ---------------------------------------------------------------------------- shapes
def test_encoder_maps_and_anomaly_map_at_256_px_have_a_16x16_bottleneck():
    model = _model(image_size=256)
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        feats = model.encoder(image)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 128, 128), (64, 128, 128), (128, 64, 64), (256, 32, 32),
                                                  (512, 16, 16)]
    maps = model.anomaly_map(image)
    assert maps.shape == (1, 1, 256, 256) and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("size", [96])
def test_shapes_and_finite_losses_at_another_size(size):
    model = _model(image_size=size)
    model.train()
    model.start_stage("gpt")
    gpt = model.training_step({"image": torch.randn(2, 3, size, size)}, "gpt")
    model.start_stage("seg")
    seg = model.training_step(_seg_batch(2, size), "seg")
    assert all(torch.isfinite(v) for v in [*gpt.values(), *seg.values()])
    assert model.anomaly_map(torch.randn(3, 3, size, size)).shape == (3, 1, size, size)
    with torch.no_grad():
        assert model.encoder(torch.randn(1, 3, size, size))[-1].shape[-2:] == (size // 16, size // 16)


def test_image_score_is_the_mean_of_the_topk_pixels_at_any_batch_size():
    model = _model(topk=10)
    maps = torch.rand(3, 1, 64, 64)
    scores = model.image_score(maps)
    singles = torch.cat([model.image_score(maps[i:i + 1]) for i in range(3)])
    expected = torch.stack([m.flatten().sort(descending=True).values[:10].mean() for m in maps])
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(singles, expected)


# ---------------------------------------------------------------------------- GAN routing
def test_discriminator_grads_come_only_from_d_loss_and_generator_grads_only_from_g_loss():
    model = _model()
    model.train()
    images = torch.randn(2, 3, 64, 64)
    masks = model.inpainting_masks(2, 64)
    g_loss, d_loss, _ = model.gan_losses(images, masks)
    disc = list(model.discriminator.parameters())
    gen = [*model.encoder.parameters(), *model.gpt.parameters()]
    assert all(g is None for g in torch.autograd.grad(g_loss, disc, retain_graph=True, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(d_loss, gen, retain_graph=True, allow_unused=True))
    d_grads = torch.autograd.grad(d_loss, disc, retain_graph=True)
    g_grads = torch.autograd.grad(g_loss, gen, retain_graph=True, allow_unused=True)
    assert any(g.abs().sum() > 0 for g in d_grads) and any(g is not None and g.abs().sum() > 0 for g in g_grads)
    # the one summed loss gives each side exactly its own loss's gradients
    (g_loss + d_loss).backward()
    for p, g in zip(disc, d_grads):
        torch.testing.assert_close(p.grad, g)


# ---------------------------------------------------------------------------- stages
def _run(model: SLSG, stage, batches, steps: int) -> None:
    model.start_stage(stage.name)
    model.train()
    for i in range(steps):
        losses = model(batches[i % len(batches)], stage=stage.name)
        for opt in stage.optimizers:
            opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for opt in stage.optimizers:
            opt.step()
        for sched in stage.schedulers:
            if sched is not None:
                sched.step()
        model.after_step(stage.name)


def test_stage_two_starts_from_the_encoder_stage_one_left_and_keeps_it_frozen_with_bn_adapting():
    model = _model()
    gpt, seg = model.stages()
    assert (gpt.name, gpt.batch_size, seg.name, seg.batch_size) == ("gpt", 2, "seg", 2)
    assert seg.data["view"] == "anomaly_simulation" and set(SIMULATION_KEYS) <= set(seg.data)
    initial = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    _run(model, gpt, [{"image": torch.randn(2, 3, 64, 64)}], 2)
    after_gpt = {k: v.clone() for k, v in model.encoder.named_parameters()}
    assert any(not torch.equal(initial[k], v) for k, v in after_gpt.items())  # stage 1 trained the encoder
    disc_before = [p.clone() for p in model.discriminator.parameters()]
    bn_before = model.encoder.bn1.running_mean.clone()
    seg_before = [p.clone() for p in model.segnet.parameters()]
    _run(model, seg, [_seg_batch(2, 64)], 2)
    for name, p in model.encoder.named_parameters():
        assert not p.requires_grad and p.grad is None
        assert torch.equal(p, after_gpt[name]), name
    assert not torch.equal(model.encoder.bn1.running_mean, bn_before)  # BatchNorm still adapts
    assert any(not torch.equal(a, b) for a, b in zip(seg_before, model.segnet.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(disc_before, model.discriminator.parameters()))
    assert model.steps_done.tolist() == [2, 2]


def test_max_steps_caps_both_stages_and_skip_gpt_or_zero_gpt_steps_leave_only_segnet():
    assert SLSGConfig().stage_steps() == (2400, 3500)
    assert SLSGConfig.build({"max_steps": 590}).stage_steps() == (240, 350)
    assert [s.name for s in _model(skip_gpt=True).stages()] == ["seg"]
    assert [s.name for s in _model(gpt_steps=0).stages()] == ["seg"]
    assert _model(skip_gpt=True).stages()[0].steps == 2


def test_segnet_lr_decays_by_cosine_to_zero():
    assert cosine_factor(0, 100) == 1.0 and cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100) == pytest.approx(0.0)


def test_plain_unet_bottleneck_ablation_trains_a_step():
    model = _model(use_sg_block=False)
    model.train()
    model.start_stage("seg")
    losses = model.training_step(_seg_batch(2, 64), "seg")
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and not hasattr(model.segnet.bottleneck, "fc1")


# ---------------------------------------------------------------------------- config
def test_simulation_keys_are_the_views_options_with_the_same_defaults():
    from logicad.data.simulation import SimulationOptions

    options = {f.name: f.default for f in dataclasses.fields(SimulationOptions)}
    config = SLSGConfig()
    assert set(SIMULATION_KEYS) == set(options)
    for key in SIMULATION_KEYS:
        assert getattr(config, key) == options[key], key


@pytest.mark.parametrize("overrides, match", [
    ({"mask_ratioo": 0.5}, "mask_ratioo"),
    ({"mask_ratio": 1.5}, "'mask_ratio'"),
    ({"image_size": 100}, "'image_size'"),
    ({"gpt_init": "imagenet"}, "'gpt_weights'"),
    ({"gpt_init": "coco"}, "'gpt_init'"),
    ({"encoder": "vgg16"}, "'encoder'"),
    ({"foreground": "magic"}, "'foreground'"),
    ({"p_logical": -0.1}, "'p_logical'"),
    ({"logical_sources": "other,teleport"}, "'logical_sources'"),
    ({"structural_min_exp": 4, "structural_max_exp": 2}, "structural_min_exp"),
    ({"seg_steps": 0}, "'seg_steps'"),
    ({"use_sg_block": "maybe"}, "'use_sg_block'"),
])
def test_bad_keys_fail_clearly(overrides, match):
    with pytest.raises(ConfigError, match=match):
        SLSGConfig.build(overrides)


def test_a_missing_imagenet_weights_file_fails_before_training_naming_it(tmp_path):
    model = build_method("slsg", SLSGConfig.build({**TINY, "gpt_init": "imagenet",
                                                   "gpt_weights": str(tmp_path / "r18.pth")}))
    with pytest.raises(BackboneWeightsError, match="r18.pth"):
        model.stages()
    assert any("unavailable" in line for line in model.describe())


def test_cpu_synthetic_preset_is_not_the_default():
    preset = SLSGConfig.build(preset="cpu-synthetic")
    assert preset.image_size < 256 and SLSGConfig().image_size == 256
    assert SLSGConfig().encoder == "resnet18" and preset.encoder == "tf_efficientnet_lite0"
    assert sum(preset.stage_steps()) <= preset.max_steps


# ---------------------------------------------------------------------------- encoders
LITE0 = dict(encoder="tf_efficientnet_lite0", gpt_init="imagenet", gpt_weights="imagenet-lite0")


def test_cpu_synthetic_preset_builds_with_the_shipped_imagenet_lite0_weights():
    from logicad.models.backbones import read_weights

    config = SLSGConfig.build(preset="cpu-synthetic")
    model = build_method("slsg", config)
    imagenet = read_weights("tf_efficientnet_lite0", "imagenet-lite0")
    encoder = model.encoder.body.state_dict()
    assert "imagenet-lite0" in model.encoder.source
    assert encoder and all(torch.equal(v, imagenet[k]) for k, v in encoder.items())


def test_lite0_encoder_reports_its_levels_and_the_networks_follow_them():
    model = _model(**LITE0, image_size=64)
    assert model.encoder.channels == (16, 24, 40, 112) and model.encoder.reductions == (2, 4, 8, 16)
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4)]
    assert model.segnet.bottleneck.fc1[0].in_channels == 112  # the SG block sits on the stride-16 map
    model.train()
    model.start_stage("gpt")
    gpt = model.training_step({"image": torch.randn(2, 3, 64, 64)}, "gpt")
    model.start_stage("seg")
    seg = model.training_step(_seg_batch(2, 64), "seg")
    assert all(torch.isfinite(v) for v in [*gpt.values(), *seg.values()])
    assert model.anomaly_map(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_the_default_resnet18_encoder_still_builds_with_random_weights():
    model = _model()
    assert model.config.encoder == "resnet18" and model.encoder.source == "random"
    assert model.encoder.channels == (64, 64, 128, 256, 512)
    assert model.segnet.bottleneck.fc1[0].in_channels == 512


def test_a_saved_lite0_model_reloads_without_reading_weights_and_scores_identically(tmp_path, monkeypatch):
    from logicad.models import backbones
    from logicad.pipelines.train.checkpoints import load_model, save_model

    model = _model(**LITE0)
    model.train()
    model.start_stage("seg")
    model.training_step(_seg_batch(2, 64), "seg")  # BatchNorm statistics move off ImageNet's
    images = torch.randn(2, 3, 64, 64)
    expected = model.anomaly_map(images)
    save_model(tmp_path / "model.pt", model)
    monkeypatch.setattr(backbones, "read_weights", lambda *a, **k: pytest.fail("weights source re-read"))
    reloaded = load_model(tmp_path / "model.pt")
    assert reloaded.config.encoder == "tf_efficientnet_lite0"
    assert torch.equal(reloaded.anomaly_map(images), expected)


def test_driver_checks_the_encoder_weights_against_the_encoder_before_ray():
    from logicad.pipelines.train.driver import check_paths

    assert SLSGConfig.BACKBONE_WEIGHTS == {"gpt_weights": "encoder"}
    check_paths(SLSGConfig.build(preset="cpu-synthetic"))
    with pytest.raises(ConfigError, match="gpt_weights.*tf_efficientnet_lite0"):
        check_paths(SLSGConfig.build({"gpt_init": "imagenet", "gpt_weights": "imagenet-lite0"}))  # on resnet18


# ---------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def _model_dir(output: Path) -> Path:
    """A run's model folder: <output>/latest/model where runs get their own folders, else <output>/model."""
    latest = output / "latest" / "model"
    return latest if latest.exists() else output / "model"


RAY_SETS = ["image_size=64", "batch_size=2", "gpt_batch_size=2", "gpt_steps=4", "seg_steps=6", "max_steps=10",
            "sim_draws=2", "precision=32"]


@pytest.fixture(scope="module")
def killed_in_stage_two(ray_runtime, small_loco, category, tmp_path_factory):
    """2 DDP workers, checkpoints every 2 steps of a stage; the last worker is killed at global
    step 9 (stage "seg", step 5), so the run resumes from the checkpoint at seg step 4."""
    from logicad.pipelines.config import resolve_config
    from logicad.pipelines.train.driver import TrainJob, run_train

    tmp = tmp_path_factory.mktemp("slsg")
    job = TrainJob("slsg", resolve_config("slsg", RAY_SETS), "mvtec_loco", str(small_loco), category,
                   output_dir=str(tmp / "two"), storage_path=str(tmp / "ray"), run_name="two",
                   tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", log_every=2, workers=2, checkpoint_every=2,
                   max_failures=1, fault_at_step=9)
    return tmp, run_train(job)


def test_a_run_killed_in_stage_two_resumes_there_without_redoing_stage_one(killed_in_stage_two):
    from logicad.pipelines.train.checkpoints import read_model_file

    tmp, record = killed_in_stage_two
    final = read_model_file(_model_dir(tmp / "two"))
    assert final["training"]["resumed_from"] == {"stage": 1, "step": 4}
    assert final["state_dict"]["steps_done"].tolist() == [4, 6]  # stage 1 trained once, not again
    # the encoder stage 1 left is the one the final model scores with
    checkpoints = [read_model_file(p) for p in (tmp / "ray" / "two").glob("checkpoint_*/model.pt")]
    stage_two = [c for c in checkpoints if c["training"]["stage"] == 1 and not c["training"].get("finished")]
    assert stage_two
    for c in stage_two:
        for key, value in c["state_dict"].items():
            if key.startswith("encoder.") and value.is_floating_point() and "running" not in key:
                assert torch.equal(value, final["state_dict"][key]), key


def test_two_workers_keep_identical_replicas_discriminator_included(killed_in_stage_two):
    tmp, record = killed_in_stage_two
    assert record["replica_divergence"] == 0.0  # the sum of every parameter, discriminator included
    metrics = json.loads((_model_dir(tmp / "two") / "metrics.json").read_text())
    assert metrics["method"] == "slsg" and 0.0 <= metrics["image_auroc"] <= 1.0


def test_registered_model_reloads_in_a_fresh_process_with_the_same_scores(killed_in_stage_two, small_loco, category):
    tmp, one = killed_in_stage_two
    assert_registered_model_scores_alike(one["model_uri"], Path(one["run_dir"]) / "model", tmp / "mlflow.db",
                                         small_loco, category)


def test_shipped_search_spaces_load_with_slsg_keys():
    from logicad.pipelines.tune.search_space import load_space

    root = Path(__file__).resolve().parent.parent / "tune_spaces"
    space = load_space(root / "slsg.yaml", "slsg")
    assert {"mask_ratio", "mask_patch_size", "large_mask_min", "large_mask_max", "p_logical", "logical_threshold",
            "structural_threshold", "lr"} <= set(space.space)
    ablation = load_space(root / "slsg_ablation.yaml", "slsg")
    assert set(ablation.space) == {"p_logical", "skip_gpt", "use_sg_block"}
    assert all("grid" in spec for spec in ablation.space.values())


def test_slsg_lists_its_simulation_view_so_the_objective_holds_out_the_texture_family():
    from logicad.pipelines.tune.objective import held_out_families

    model = _model()
    seg, = [stage for stage in model.stages() if stage.data]
    assert model.training_views() == [seg.data]
    assert held_out_families(model) == ["drawn"]


def test_a_fusion_with_an_slsg_member_holds_out_the_family_slsg_learnt_from():
    from logicad.models.fusion import Fusion
    from logicad.pipelines.tune.objective import held_out_families

    slsg, gaussian = _model(), build_method("global_gaussian", image_size=64)
    assert held_out_families(Fusion.from_members([("a", slsg), ("b", gaussian)])) == ["drawn"]
    assert held_out_families(Fusion.from_members([("b", gaussian), ("c", gaussian)])) == ["texture", "drawn"]
