"""DFSC: losses, masks, shapes, frozen teacher, EMA, statistics, scoring, state round trip."""

from __future__ import annotations

import math

import logicad.models  # noqa: F401  (torchvision op schemas before timm)
import pytest
import torch
import torch.nn.functional as F
from logicad.models.base import Collective, ConfigError, build_method, method_class
from logicad.models.dfsc import DFSC, DFSCConfig, lr_factor
from logicad.models.dfsc import loss as L
from logicad.models.dfsc.network import (
    Autoencoder,
    PDNSmall,
    decoder_sizes,
    pdn_output_size,
)
from logicad.models.feature_cache import FeatureCache

from images import square_images as _images

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(images: torch.Tensor, batch_size: int, label: int = 0) -> list[dict]:
    return [{"image": images[i:i + batch_size], "label": torch.full((len(images[i:i + batch_size]),), label),
             "index": torch.arange(i, min(i + batch_size, len(images)))}
            for i in range(0, len(images), batch_size)]


def _model(**overrides) -> DFSC:
    torch.manual_seed(0)
    values = {"image_size": 64, "batch_size": 2, "max_steps": 50, **overrides}
    return build_method("dfsc", **values)


def _train(model: DFSC, batches: list[dict], steps: int) -> list[float]:
    stage = model.stages()[0]
    losses = []
    for step in range(steps):
        out = model(batches[step % len(batches)], stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        stage.optimizer.step()
        stage.scheduler.step()
        model.after_step(stage.name)
        losses.append(float(out["loss"].detach()))
    return losses


class RecordingCollective(Collective):
    """Returns its input; remembers what it was given (one worker's partial statistic)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def sum(self, tensor):
        self.seen.append(tensor.clone())
        return tensor

    def cat(self, tensor):
        self.seen.append(tensor.clone())
        return tensor


class TwoWorkerCollective(Collective):
    """Worker 0 of two: the other worker's partial statistics were recorded beforehand."""

    world_size = 2

    def __init__(self, other: list[torch.Tensor]) -> None:
        self.other = list(other)

    def sum(self, tensor):
        return tensor + self.other.pop(0)

    def cat(self, tensor):
        return torch.cat([tensor, self.other.pop(0)])


# --- the DFSC hinge ----------------------------------------------------------------------
def test_dfsc_hinge_is_zero_when_teacher_and_autoencoder_are_separated_beyond_the_margin():
    t = torch.randn(2, 16, 8, 8)
    a = -t  # opposite directions: d = 2 everywhere
    d_ta = (t - a).pow(2)
    for reduction in ("channel", "element"):
        assert float(L.dfsc_loss(t, a, d_ta, 0.999, margin=1.0, reduction=reduction)) == 0.0
        assert float(L.dfsc_loss(t, a, d_ta, 0.999, margin=1.9, reduction=reduction)) == 0.0


def test_dfsc_hinge_is_positive_when_close_and_its_gradient_pushes_the_autoencoder_away():
    torch.manual_seed(0)
    t = torch.randn(1, 16, 8, 8, requires_grad=True)
    a = (t.detach() + 0.1 * torch.randn_like(t)).requires_grad_(True)  # d ~ 0.1 < margin
    d_ta = (t - a).pow(2).detach()
    mask = L.top_quantile_mask(d_ta.mean(1, keepdim=True), 0.9)[:, 0]
    before = L.separation(t.detach(), a.detach())[mask]
    loss = L.dfsc_loss(t, a, d_ta, 0.9, margin=1.0, reduction="channel")
    assert math.isclose(loss.item(), float((1.0 - before).mean()), rel_tol=1e-5) and loss.item() > 0.5
    loss.backward()
    assert t.grad is None  # the teacher is detached: only the autoencoder gets a gradient
    with torch.no_grad():
        a_new = a - 0.5 * a.grad
    after = L.separation(t.detach(), a_new)[mask]
    assert bool((after > before).all())
    assert torch.count_nonzero(a.grad.abs().sum(1)[0]) == int(mask.sum())  # only masked locations move


# --- quantiles and masks -----------------------------------------------------------------
def test_quantile_matches_torch_quantile_and_handles_more_than_16m_elements():
    x = torch.randn(3, 1001)
    for q in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0):
        assert torch.allclose(L.quantile(x, q), torch.quantile(x, q))
        assert torch.allclose(L.quantile(x, q, dim=1), torch.quantile(x, q, dim=1))
    big = torch.arange(17_000_001, dtype=torch.float32)  # torch.quantile refuses > 16M elements
    assert float(L.quantile(big, 0.5)) == 8_500_000.0


def test_quantile_masks_keep_the_right_fraction():
    torch.manual_seed(0)
    d = torch.rand(2, 384, 56, 56)
    hard = L.top_quantile_mask(d, 0.999)  # L_hard: ~0.1% of the elements of each image
    per_image = hard.flatten(1).float().mean(1)
    assert torch.allclose(per_image, torch.full((2,), 0.001), atol=2e-5)
    loc = L.top_quantile_mask(d.mean(1, keepdim=True), 0.999)  # DFSC: ~0.1% of the locations (4 of 3136)
    assert loc.shape == (2, 1, 56, 56) and loc.flatten(1).sum(1).tolist() == [4, 4]
    top = torch.sort(d[0].flatten(), descending=True).values[:1205]
    assert math.isclose(float(L.hard_loss(d[:1], 0.999)), float(top.mean()), rel_tol=1e-4)


# --- shapes --------------------------------------------------------------------------------
def test_output_shapes_at_256_px():
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert PDNSmall(384)(x).shape == (1, 384, 56, 56)
        assert PDNSmall(768)(x).shape == (1, 768, 56, 56)
        assert Autoencoder(256)(x).shape == (1, 384, 56, 56)
    assert decoder_sizes(256) == (3, 8, 15, 32, 63, 127) and pdn_output_size(256) == 56
    assert _model(image_size=256).anomaly_map(torch.randn(2, 3, 256, 256)).shape == (2, 1, 256, 256)


@pytest.mark.parametrize("size, feature", [(128, 24), (192, 40), (64, 8)])
def test_output_shapes_at_other_sizes(size, feature):
    model = _model(image_size=size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model.teacher(x[:1]).shape == (1, 384, feature, feature)
        assert model.student(x[:1]).shape == (1, 768, feature, feature)
        assert model.autoencoder(x[:1]).shape == (1, 384, feature, feature)
    maps = model.anomaly_map(x)
    assert maps.shape == (2, 1, size, size) and model.image_score(maps).shape == (2,)


def test_image_size_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="image_size"):
        DFSCConfig().replace(image_size=32)


# --- teacher, EMA, training ---------------------------------------------------------------
def test_teacher_is_frozen_and_unchanged_by_training_steps():
    model = _model()
    batches = _batches(_images(4, 64), 2)
    model.prepare(batches)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    _train(model, batches, 3)
    assert not model.teacher.training
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.teacher.parameters())


def test_ema_differs_from_the_student_and_moves_toward_it():
    model = _model(warmup_beta2=0.0, lr=1e-3)
    batches = _batches(_images(4, 64), 2)
    model.prepare(batches)
    _train(model, batches, 2)
    ema, live = model.student_ema.conv4.weight, model.student.conv4.weight.detach()
    assert not torch.equal(ema, live)
    old = ema.clone()
    model.after_step("train")
    assert torch.allclose(ema, 0.99 * old + 0.01 * live, atol=1e-7)
    assert (ema - live).norm() < (old - live).norm()


def test_a_few_training_steps_reduce_the_loss():
    model = _model(lr=1e-3, warmup_beta2=0.0, batch_size=2)
    batches = _batches(_images(2, 64, seed=1), 2)
    model.prepare(batches)
    losses = _train(model, batches, 12)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("hard_quantile", [0.999, 0.5])  # sparse path, and the dense fallback
def test_sparse_hard_backward_gives_the_dense_gradients(hard_quantile):
    import copy

    model = _model(hard_quantile=hard_quantile)
    batch = _batches(_images(2, 64), 2)[0]
    model.prepare([batch])
    dense = copy.deepcopy(model)
    dense.sparse_hard_backward = False
    grads = []
    for m in (model, dense):
        torch.manual_seed(1)  # same dropout masks
        m(batch, stage="train")["loss"].backward()
        grads.append({k: p.grad.clone() for k, p in m.student.named_parameters()})
    for key, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][key], rtol=1e-4, atol=1e-6), key


def test_training_step_returns_the_losses_in_float32_under_bf16_autocast():
    model = _model()
    batches = _batches(_images(2, 64), 2)
    model.prepare(batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batches[0], stage="train")
    assert set(out) == {"loss", "l_hard", "l_ae", "l_stae", "l_dfsc"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert model.student.conv1.weight.grad is not None and model.autoencoder.head[1].weight.grad is not None


def _teacher(model):
    """The teacher forward as the cache's `compute` (a tuple of levels: one)."""
    return lambda x: (model._teacher_features(x),)


def test_teacher_cache_serves_the_same_features_and_recomputes_a_changed_image():
    model = _model()
    images = _images(2, 64)
    model.prepare(_batches(images, 2))
    direct = model._teacher_features(images)
    first = model.cache.lookup(images, torch.arange(2), _teacher(model))[0].float()
    again = model.cache.lookup(images, torch.arange(2), _teacher(model))[0].float()
    assert model.cache.hits == 2 and model.cache.misses == 2 and torch.equal(first, again)
    assert torch.allclose(first, direct, rtol=2e-3, atol=2e-3)
    other = model.cache.lookup(images.flip(0), torch.arange(2), _teacher(model))[0].float()  # same keys, new images
    assert model.cache.misses == 4 and torch.allclose(other, direct.flip(0), rtol=2e-3, atol=2e-3)
    small = FeatureCache(budget_bytes=384 * 8 * 8 * 2, dtype=torch.float16)  # room for one image's features
    assert torch.equal(small.lookup(images, torch.arange(2), _teacher(model))[0].float(), first)
    assert len(small.entries) == 1 and small.used <= small.budget


def test_lr_schedule_warms_up_exponentially_and_drops_for_the_last_tenth():
    assert math.isclose(lr_factor(0, 1000, 0.997, 0.1), 1 - math.exp(-0.003))
    assert math.isclose(lr_factor(899, 1000, 0.997, 0.1), 1 - math.exp(-0.003 * 900))
    assert math.isclose(lr_factor(900, 1000, 0.997, 0.1), 0.1 * (1 - math.exp(-0.003 * 901)))
    model = _model(max_steps=10)
    stage = model.stages()[0]
    assert stage.name == "train" and stage.steps == 10 and isinstance(stage.optimizer, torch.optim.AdamW)
    assert stage.optimizer.param_groups[0]["weight_decay"] == 1e-5


def test_penalty_images_add_l_penalty(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (50, 40), (i * 100, 20, 200)).save(tmp_path / f"{i}.png")
    model = _model(penalty_dir=str(tmp_path))
    batches = _batches(_images(2, 64), 2)
    model.prepare(batches)
    losses = _train(model, batches, 1)
    out = model(batches[0], stage="train")
    assert "l_penalty" in out and math.isfinite(losses[0])
    with pytest.raises(FileNotFoundError, match="penalty_dir"):
        _model(penalty_dir=str(tmp_path / "nope")).stages()


# --- statistics: prepare and finalize --------------------------------------------------------
def test_prepare_statistics_equal_a_direct_computation():
    model = _model()
    images = _images(5, 64)
    model.prepare(_batches(images, 2))
    with torch.no_grad():
        out = model.teacher(images)
    mean = out.mean(dim=(0, 2, 3))
    std = out.permute(1, 0, 2, 3).reshape(384, -1).std(dim=1, unbiased=False)
    assert torch.allclose(model.teacher_mean, mean, atol=1e-5, rtol=1e-5)
    assert torch.allclose(model.teacher_std, std, atol=1e-5, rtol=1e-4)


def test_prepare_on_two_workers_equals_one_process_on_all_data():
    images = _images(6, 64)
    one = _model()
    one.prepare(_batches(images, 2))
    recorder = RecordingCollective()
    _model().prepare(_batches(images[3:], 2), recorder)  # worker 1's half
    two = _model()
    two.prepare(_batches(images[:3], 2), TwoWorkerCollective(recorder.seen))  # worker 0's half
    assert torch.allclose(two.teacher_mean, one.teacher_mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(two.teacher_std, one.teacher_std, rtol=1e-6, atol=1e-7)


def _trained(size: int = 64) -> tuple[DFSC, torch.Tensor]:
    model = _model(image_size=size, lr=1e-3, warmup_beta2=0.0)
    images = _images(4, size)
    model.prepare(_batches(images, 2))
    _train(model, _batches(images, 2), 3)
    return model, images


def test_finalize_quantiles_of_normal_validation_maps_also_over_two_workers():
    model, _ = _trained()
    val = _images(5, 64, seed=3)
    batches = _batches(val, 2) + _batches(_images(2, 64, seed=4), 2, label=1)  # anomalous ones are skipped
    model.finalize(batches)
    map_st, map_ae = model.raw_maps(val)
    assert torch.allclose(model.q_st, torch.quantile(map_st.flatten(), torch.tensor([0.9, 0.995])))
    assert torch.allclose(model.q_ae, torch.quantile(map_ae.flatten(), torch.tensor([0.9, 0.995])))
    assert bool(model.finalized)
    q_st, q_ae = model.q_st.clone(), model.q_ae.clone()
    recorder = RecordingCollective()
    model.finalize(_batches(val[2:], 2), recorder)
    model.finalize(_batches(val[:2], 2), TwoWorkerCollective(recorder.seen))
    assert torch.equal(model.q_st, q_st) and torch.equal(model.q_ae, q_ae)


def test_state_dict_round_trip_scores_identically():
    model, _ = _trained()
    model.finalize(_batches(_images(3, 64, seed=5), 3))
    state = model.state_dict()
    for prefix in ("teacher.", "student.", "student_ema.", "autoencoder."):
        assert any(k.startswith(prefix) for k in state)
    for key in ("teacher_mean", "teacher_std", "q_st", "q_ae", "finalized"):
        assert key in state
    fresh = DFSC(model.config)
    fresh.load_state_dict(state)
    test = _images(3, 64, seed=9)
    maps, maps_fresh = model.eval().anomaly_map(test), fresh.eval().anomaly_map(test)
    assert torch.equal(maps, maps_fresh)
    assert torch.equal(model.image_score(maps), fresh.image_score(maps_fresh))
    assert float(maps.min()) > 0 and float(maps.max()) < 1


def test_scoring_is_deterministic_and_ignores_train_mode_dropout():
    model, images = _trained()
    model.train()
    assert torch.equal(model.anomaly_map(images), model.anomaly_map(images))


def test_channels_last_model_scores_like_the_default_layout():
    model, images = _trained()
    expected = model.anomaly_map(images)
    model = model.to(memory_format=torch.channels_last)
    assert model.student.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model.anomaly_map(images), expected, atol=1e-5)
    out = model(_batches(images, 2)[0], stage="train")
    out["loss"].backward()


# --- config ---------------------------------------------------------------------------------
def test_config_defaults_preset_and_validation():
    config = DFSCConfig()
    assert (config.image_size, config.batch_size, config.max_steps, config.lr, config.weight_decay) == \
        (256, 1, 70000, 1e-4, 1e-5)
    assert (config.quantile, config.hard_quantile, config.map_q_low, config.map_q_high) == (0.999, 0.999, 0.9, 0.995)
    assert config.dfsc_reduction == "channel" and config.teacher_weights == "" and config.penalty_dir == ""
    assert method_class("dfsc") is DFSC
    preset = DFSCConfig.build(preset="cpu-synthetic")
    assert preset.image_size < 256 and preset.max_steps < 70000
    for key, value in [("margin", 2.5), ("quantile", 1.5), ("ema_momentum", 1.0), ("dfsc_reduction", "sum"),
                       ("map_q_high", 0.5), ("teacher_cache_mb", -1)]:
        with pytest.raises(ConfigError, match=key):
            DFSCConfig().replace(**{key: value})


def test_describe_names_the_teacher():
    lines = _model().describe()
    assert any("teacher: random init" in line for line in lines)


# --- ablation keys: where DFSC departs from EfficientAD ---------------------------------------
#: the default configuration's losses (3 steps) and map sum, recorded from the code before the
#: ablation keys existed (image_size 64, lr 1e-3, no warm-up, torch.manual_seed(0) before training)
REFERENCE = {
    1.0: ([32.55924987792969, 27.14311981201172, 26.28750228881836], [0.0, 0.0, 0.0], 6013.58676430583),
    2.0: ([33.65867233276367, 27.84326934814453, 26.908048629760742],
          [0.549711287021637, 0.33050107955932617, 0.23478668928146362], 6006.486723005772),
}


def _reference_run(**overrides) -> tuple[DFSC, list[dict], torch.Tensor]:
    """Three training steps, finalize, maps: the recipe of REFERENCE."""
    model = _model(lr=1e-3, warmup_beta2=0.0, **overrides)
    images = _images(4, 64)
    model.prepare(_batches(images, 2))
    stage = model.stages()[0]
    torch.manual_seed(0)
    outs = []
    for step in range(3):
        out = model(_batches(images, 2)[step % 2], stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        stage.optimizer.step()
        stage.scheduler.step()
        model.after_step(stage.name)
        outs.append({k: float(v.detach()) for k, v in out.items()})
    model.finalize(_batches(_images(3, 64, seed=5), 3))
    return model, outs, model.anomaly_map(_images(3, 64, seed=9))


@pytest.mark.parametrize("margin", [1.0, 2.0])  # hinge inactive / active
def test_default_configuration_gives_the_losses_and_maps_recorded_before_the_ablation_keys(margin):
    _, outs, maps = _reference_run(margin=margin)
    losses, hinges, map_sum = REFERENCE[margin]
    # the first step to float32 rounding; later steps looser: the masked means that replaced
    # boolean indexing (static shapes for a compiled step; equal in float64, see the test below)
    # sum in another order, and Adam amplifies last-bit gradient differences (measured at step 3:
    # loss 1.8e-5, hinge 9e-4 relative)
    assert outs[0]["loss"] == pytest.approx(losses[0], rel=1e-6)
    assert outs[0]["l_dfsc"] == pytest.approx(hinges[0], rel=1e-5, abs=1e-7)
    assert [o["loss"] for o in outs] == pytest.approx(losses, rel=1e-4)
    assert [o["l_dfsc"] for o in outs] == pytest.approx(hinges, rel=2e-3, abs=1e-7)
    assert float(maps.double().sum()) == pytest.approx(map_sum, rel=1e-3)  # measured 1.8e-4


def test_masked_mean_losses_equal_the_boolean_indexed_forms_in_float64():
    """L_hard and the hinge as masked means (static shapes) are the papers' means over the
    selected elements / locations: same values and gradients."""
    torch.manual_seed(0)
    teacher = torch.randn(2, 32, 9, 9, dtype=torch.float64)
    ae = (teacher + 0.3 * torch.randn_like(teacher)).requires_grad_()
    ae_ref = ae.detach().clone().requires_grad_()
    d_ta = (teacher - ae).pow(2).detach()
    hinge = L.dfsc_loss(teacher, ae, d_ta, 0.9, 2.0)
    where = L.top_quantile_mask(d_ta.mean(1, keepdim=True), 0.9).any(1)
    t_hat = F.normalize(teacher.permute(0, 2, 3, 1)[where], dim=-1)
    a_hat = F.normalize(ae_ref.permute(0, 2, 3, 1)[where], dim=-1)
    reference = F.relu(2.0 - (t_hat - a_hat).norm(dim=-1)).mean()
    (hinge + L.hard_loss((teacher - ae).pow(2), 0.99)).backward()
    d_ref = (teacher - ae_ref).pow(2)
    (reference + d_ref[L.top_quantile_mask(d_ref, 0.99)].mean()).backward()
    assert float(hinge) == pytest.approx(float(reference), rel=1e-12) and float(hinge) > 0
    assert torch.allclose(ae.grad, ae_ref.grad, rtol=1e-10, atol=1e-15)


def test_ablation_keys_default_to_dfsc_and_are_validated():
    c = DFSCConfig()
    assert (c.ae_norm, c.ae_extra_relu, c.map_norm, c.ae_augment) == ("instance", True, "sigmoid", "none")
    assert DFSCConfig.build(overrides={"ae_extra_relu": "false"}).ae_extra_relu is False
    for key, value in [("ae_norm", "batch"), ("map_norm", "tanh"), ("ae_augment", "heavy")]:
        with pytest.raises(ConfigError, match=key):
            DFSCConfig().replace(**{key: value})
    assert "map_norm" in DFSCConfig.SCORE_ONLY


def test_ae_norm_none_removes_exactly_the_autoencoders_instance_norms():
    dfsc, plain = _model(), _model(ae_norm="none")
    count = lambda m: sum(isinstance(x, torch.nn.InstanceNorm2d) for x in m.modules())  # noqa: E731
    assert count(dfsc.autoencoder) == 5 + 6 + 1 and count(plain.autoencoder) == 0
    for a, b in [(dfsc.teacher, plain.teacher), (dfsc.student, plain.student)]:  # nothing else changes
        assert [type(x) for x in a.modules()] == [type(x) for x in b.modules()]
    assert dfsc.state_dict().keys() == plain.state_dict().keys()  # InstanceNorm has no weights
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in dfsc.state_dict().items())  # same init
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert plain.autoencoder(x).shape == dfsc.autoencoder(x).shape == (2, 384, 8, 8)


def test_ae_extra_relu_false_removes_only_the_decoders_first_relu():
    dfsc, plain = _model(), _model(ae_extra_relu=False)
    assert isinstance(dfsc.autoencoder.decoder_act, torch.nn.ReLU)
    assert isinstance(plain.autoencoder.decoder_act, torch.nn.Identity)
    relus = lambda m: sum(isinstance(x, torch.nn.ReLU) for x in m.modules())  # noqa: E731
    assert relus(dfsc.autoencoder) == relus(plain.autoencoder) + 1
    dfsc.autoencoder.eval(), plain.autoencoder.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        code = dfsc.autoencoder.encoder(x)
        assert float(code.min()) < 0  # the bottleneck has negative values that the extra ReLU clips
        assert not torch.equal(dfsc.autoencoder(x), plain.autoencoder(x))


def test_map_norm_linear_changes_only_the_map_efficientads_unbounded_average():
    dfsc, outs, sig = _reference_run()
    linear, outs_linear, lin = _reference_run(map_norm="linear")
    assert outs == outs_linear and torch.equal(dfsc.q_st, linear.q_st)  # training and quantiles untouched
    assert float(sig.min()) > 0 and float(sig.max()) < 1
    assert float(lin.min()) < 0  # below q_low in both maps: EfficientAD's maps go negative
    images = _images(3, 64, seed=9)
    map_st, map_ae = dfsc.raw_maps(images)
    expected = 0.5 * (0.1 * (map_st - dfsc.q_st[0]) / (dfsc.q_st[1] - dfsc.q_st[0])
                      + 0.1 * (map_ae - dfsc.q_ae[0]) / (dfsc.q_ae[1] - dfsc.q_ae[0]))
    centre = lin[:, 0, 28:36, 28:36]  # the bilinear resize of an 8 x 8 map padded to 16 x 16, mid image
    assert float(centre.min()) >= float(expected.min()) - 1e-6 and float(centre.max()) <= float(expected.max()) + 1e-6
    assert torch.allclose(lin[:, :, :2, :2], torch.zeros(3, 1, 2, 2))  # zero padding at the border
    # score-only: the raw parts, re-scored under the other map_norm, give the other map
    parts = dfsc.score_parts(images)
    dfsc.config = dfsc.config.replace(map_norm="linear")
    assert torch.allclose(dfsc.maps_from_parts(parts), lin, atol=1e-6)


def test_branches_keep_one_normalised_map_and_both_average_them():
    from logicad.models.dfsc import scoring

    g = torch.Generator().manual_seed(0)
    map_st, map_ae = torch.rand(2, 6, 6, generator=g), torch.rand(2, 6, 6, generator=g)
    q = torch.tensor([0.2, 0.9])
    for norm in ("sigmoid", "linear"):
        maps = {b: scoring.combine(map_st, map_ae, q, q, (14, 14), norm, b) for b in scoring.BRANCHES}
        assert torch.allclose(maps["both"], 0.5 * (maps["st"] + maps["ae"]), atol=1e-6)
        assert not torch.allclose(maps["st"], maps["ae"])
    st_only = scoring.combine(map_st, map_ae, q, q, (14, 14), "linear", "st")
    assert torch.equal(st_only, scoring.combine(map_st, torch.zeros_like(map_ae), q, q, (14, 14), "linear", "st"))
    assert "branches" in DFSCConfig.SCORE_ONLY
    with pytest.raises(ConfigError, match="branches"):
        DFSCConfig().replace(branches="teacher")


def test_ae_augment_jitters_only_the_autoencoders_input():
    from logicad.models.dfsc.augment import colour_jitter

    model = _model(ae_augment="efficientad")
    images = _images(2, 64)
    batch = _batches(images, 2)[0]
    model.prepare([batch])
    teacher, images_ae, teacher_ae = model.training_targets(batch, images)
    assert images_ae.shape == images.shape and not torch.equal(images_ae, images)
    assert torch.allclose(teacher, model._teacher_features(images), rtol=2e-3, atol=2e-3)  # L_hard: the image
    assert torch.equal(teacher_ae, model._teacher_features(images_ae))  # L_ae: the augmented image
    plain = _model()
    plain.prepare([batch])
    t, same, t_ae = plain.training_targets(batch, images)
    assert same is images and t_ae is t
    # one of brightness, contrast, saturation per image, factor in [0.8, 1.2], in the [0, 1] domain
    g = torch.Generator().manual_seed(0)
    grey = torch.zeros(1, 3, 8, 8) + torch.tensor([0.5, 0.5, 0.5])[:, None, None]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for _ in range(10):
        out = colour_jitter((grey - mean) / std, g) * std + mean
        # contrast and saturation leave a uniform grey image as it is; brightness scales it
        assert 0.4 - 1e-5 <= float(out.mean()) <= 0.6 + 1e-5 and float(out.std()) < 1e-5


def test_augmentation_with_the_teacher_cache_gives_the_teachers_fresh_features():
    cached = _model(ae_augment="efficientad")
    fresh = _model(ae_augment="efficientad", teacher_cache_mb=0)
    images = _images(4, 64)
    batches = _batches(images, 2)
    cached.prepare(batches), fresh.prepare(batches)
    for epoch in range(2):  # the second epoch is served from the cache
        for batch in batches:
            t_cached, in_cached, t_ae_cached = cached.training_targets(batch, batch["image"])
            t_fresh, in_fresh, t_ae_fresh = fresh.training_targets(batch, batch["image"])
            assert torch.equal(in_cached, in_fresh)  # same seed: same jitter
            assert torch.allclose(t_cached, t_fresh, rtol=2e-3, atol=2e-3)  # float16 entries
            assert torch.equal(t_ae_cached, t_ae_fresh)
            assert torch.equal(t_ae_fresh, fresh._teacher_features(in_fresh))
    assert cached.cache.hits == 4 and cached.cache.misses == 4 and fresh.cache.hits == 0
    out = cached(batches[0], stage="train")
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


# --- device-aware CPU tricks -------------------------------------------------------------------
def test_sparse_hard_backward_is_used_on_the_cpu_only():
    model = _model()
    assert model.uses_sparse_backward(torch.device("cpu"))
    assert not model.uses_sparse_backward(torch.device("cuda"))
    model.sparse_hard_backward = False
    assert not model.uses_sparse_backward(torch.device("cpu"))


def test_cached_teacher_targets_serve_a_bf16_autocast_step_on_the_cpu():
    """The cpu-synthetic preset trains under bf16 autocast: a batch mixing cached (float16) and
    fresh rows is stacked outside autocast into the same float32 targets as a full hit."""
    model = _model(precision="bf16")
    images = _images(3, 64)
    model.prepare(_batches(images, 3))
    stage = model.stages()[0]
    batch = {"image": images[1:3], "label": torch.zeros(2), "index": torch.arange(1, 3)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(_batches(images, 2)[0], stage=stage.name)  # caches images 0 and 1
        mixed = model._training_teacher(batch, batch["image"])  # image 1 cached, image 2 fresh
        hit = model._training_teacher(batch, batch["image"])  # both cached
        loss = model(batch, stage=stage.name)["loss"]
    assert model.cache.hits == 5 and mixed.dtype == torch.float32 and torch.equal(mixed, hit)
    assert torch.isfinite(loss)


def test_teacher_cache_caches_in_part_on_the_cpu_and_all_or_nothing_on_a_gpu():
    model = _model()
    images = _images(3, 64)
    model.prepare(_batches(images, 3))
    one_image = 384 * 8 * 8 * 2
    assert FeatureCache(one_image, dtype=torch.float16).partial_on(torch.device("cpu"))
    assert not FeatureCache(one_image, dtype=torch.float16).partial_on(torch.device("cuda"))
    direct = model._teacher_features(images)
    part = FeatureCache(2 * one_image, dtype=torch.float16)  # the CPU policy: two of three images cached
    first = part.lookup(images, torch.arange(3), _teacher(model))[0].float()
    assert len(part.entries) == 2 and not part.skipped
    assert torch.equal(part.lookup(images, torch.arange(3), _teacher(model))[0].float(), first)
    assert part.hits == 2
    whole = FeatureCache(2 * one_image, partial=False, dtype=torch.float16)  # the GPU policy: does not fit -> off
    assert torch.equal(whole.lookup(images, torch.arange(3), _teacher(model))[0].float(), first)
    assert whole.skipped and not whole.entries and whole.used == 0
    assert torch.equal(whole.lookup(images, torch.arange(3), _teacher(model))[0].float(), direct)  # fresh, unrounded
    assert whole.hits == 0
    fits = FeatureCache(3 * one_image, partial=False, dtype=torch.float16)  # fits: cached as on the CPU
    fits.lookup(images, torch.arange(3), _teacher(model))
    fits.lookup(images, torch.arange(3), _teacher(model))
    assert fits.hits == 3 and not fits.skipped
    whole.clear()
    assert not whole.skipped


def test_traceable_maps_equal_the_eager_maps_under_either_map_norm():
    model, images = _trained()
    model.finalize(_batches(_images(3, 64, seed=5), 3))
    model.eval()
    for map_norm in ("sigmoid", "linear"):
        model.config = model.config.replace(map_norm=map_norm)
        with torch.inference_mode():
            assert torch.allclose(model.traceable_maps(images), model.anomaly_map(images), atol=1e-6)


# --- teacher="backbone": the frozen pretrained backbone is the teacher ----------------------------
def _backbone_model(**overrides) -> DFSC:
    """A backbone-teacher DFSC at 64 px (random backbone weights unless given: fast)."""
    return _model(teacher="backbone", teacher_backbone_weights="", **overrides)


def _linear_at(level: torch.Tensor, coords: torch.Tensor, dim: int) -> torch.Tensor:
    """`level` linearly interpolated at fractional indices `coords` along `dim` (clamped at the edges)."""
    coords = coords.clamp(0, level.shape[dim] - 1)
    low = coords.floor().long()
    high = (low + 1).clamp(max=level.shape[dim] - 1)
    shape = [1] * level.dim()
    shape[dim] = -1
    frac = (coords - low).view(shape)
    return level.index_select(dim, low) * (1 - frac) + level.index_select(dim, high) * frac


def test_backbone_teacher_samples_the_pooled_levels_at_the_pdn_output_centres():
    """Target location p describes the patch the PDN student's location p sees: 4 p + 16 px at
    64 px (8 x 8), not a resize of the whole image's features onto 8 x 8."""
    model = _backbone_model()
    images = _images(2, 64)
    levels = model.teacher.backbone(F.interpolate(images, size=128, mode="bilinear", align_corners=False))
    assert [lvl.shape[1] for lvl in levels] == [40, 112] and model.channels == 152
    centres = 4 * torch.arange(8, dtype=torch.float32) + 16  # image px (pixel k's centre is k)
    expected = []
    for lvl in levels:
        pooled = F.avg_pool2d(lvl, 3, 1, 1, count_include_pad=False)
        at = (centres + 0.5) * pooled.shape[-1] / 64 - 0.5  # the same points in the level's pixels
        expected.append(_linear_at(_linear_at(pooled, at, 2), at, 3))
    out = model.teacher(images)
    assert out.shape == (2, 152, 8, 8) and torch.allclose(out, torch.cat(expected, 1), atol=1e-5)
    assert model.student.conv4.out_channels == 304 and model.autoencoder.head[-1].out_channels == 152
    assert model.teacher_mean.shape == (152,)


def test_preset_with_the_backbone_teacher_builds_with_the_shipped_imagenet_weights():
    from logicad.models.backbones import create_backbone

    assert DFSCConfig.build(preset="cpu-synthetic-pdn").teacher == "pdn"  # the random PDN, by name
    config = DFSCConfig.build(preset="cpu-synthetic")  # the default `logicad train`: pretrained features
    assert config.teacher == "backbone" and config.teacher_backbone_weights == "imagenet-lite0"
    assert config.teacher_strides == (8,)
    assert DFSCConfig.BACKBONE_WEIGHTS == {"teacher_backbone_weights": "teacher_backbone"}
    assert config.backbones_in_use() == DFSCConfig.BACKBONE_WEIGHTS
    assert DFSCConfig.build(preset="cpu-synthetic-pdn").backbones_in_use() == {}  # the plan names no unused one
    model = DFSC(config)
    assert model.channels == 40 and model.teacher(torch.zeros(1, 3, 128, 128)).shape == (1, 40, 24, 24)
    pretrained, _ = create_backbone("tf_efficientnet_lite0", "imagenet-lite0", out_indices=(2,))
    ours = model.teacher.backbone.state_dict()
    assert ours.keys() == pretrained.state_dict().keys()
    assert all(torch.equal(v, ours[k]) for k, v in pretrained.state_dict().items())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert any("imagenet-lite0" in line for line in model.describe())


def test_backbone_teacher_model_reloads_from_its_state_dict_and_scores_identically():
    from logicad.models.backbones import restoring_saved_weights

    model = _backbone_model()
    images = _images(4, 64)
    model.prepare(_batches(images, 2))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    _train(model, _batches(images, 2), 3)
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in before.items())  # frozen
    model.finalize(_batches(_images(3, 64, seed=5), 3))
    with restoring_saved_weights():
        torch.manual_seed(123)  # another random init: everything must come from the state dict
        fresh = DFSC(model.config)
    fresh.load_state_dict(model.state_dict())
    test = _images(3, 64, seed=9)
    maps, maps_fresh = model.eval().anomaly_map(test), fresh.eval().anomaly_map(test)
    assert torch.equal(maps, maps_fresh)


def test_backbone_teacher_keys_are_validated():
    with pytest.raises(ConfigError, match="teacher_weights"):
        DFSCConfig().replace(teacher="backbone", teacher_weights="t.pth")
    with pytest.raises(ConfigError, match="teacher_pool"):
        DFSCConfig().replace(teacher_pool=2)
    with pytest.raises(ConfigError, match="teacher_strides"):
        _backbone_model(teacher_strides=(8, 64))
    with pytest.raises(ConfigError, match="teacher'"):
        DFSCConfig().replace(teacher="wrn")
    assert DFSCConfig().teacher == "pdn"  # the paper's teacher stays the default
