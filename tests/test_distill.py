"""Teacher distillation, teacher files, and timm backbones with explicit weight sources."""

from __future__ import annotations

import logging
import time

import logicad.models  # noqa: F401  (torchvision op schemas before timm)
import pytest
import torch
from logicad.models import backbones
from logicad.models.backbones import BackboneWeightsError, create_backbone
from logicad.models.base import build_method
from logicad.models.distill import (
    TeacherFileError,
    distill_teacher,
    load_teacher,
    read_teacher_file,
    save_teacher,
)
from logicad.models.pdn import PDNSmall


pytestmark = pytest.mark.usefixtures("one_thread")


def _image_batches(n: int = 4, size: int = 64, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = 0.5 * torch.randn(n, 3, size, size, generator=g)
    images[:, 0, size // 4: size // 2] += 1.5
    return [images[i:i + batch] for i in range(0, n, batch)]


@pytest.fixture(scope="module")
def distilled():
    torch.manual_seed(0)
    return distill_teacher(_image_batches(), backbone="resnet18", backbone_weights=None, steps=20,
                           image_size=64, lr=1e-3, norm_batches=2)


def test_distillation_reduces_the_regression_loss(distilled):
    teacher, history = distilled
    assert len(history) == 20 and isinstance(teacher, PDNSmall) and not teacher.training
    assert sum(history[-4:]) / 4 < 0.8 * sum(history[:4]) / 4, history
    assert teacher(torch.randn(1, 3, 64, 64)).shape == (1, 384, 8, 8)
    assert teacher.distill_meta["backbone"] == "resnet18" and teacher.distill_meta["backbone_weights"] == "random"


def test_teacher_file_round_trip_and_dfsc_loads_it_via_teacher_weights(distilled, tmp_path):
    teacher, _ = distilled
    path = save_teacher(tmp_path / "teacher.pt", teacher)
    state = load_teacher(path)
    assert state.keys() == teacher.state_dict().keys()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in state.items())
    assert read_teacher_file(path)["meta"]["backbone"] == "resnet18"
    model = build_method("dfsc", image_size=64, teacher_weights=str(path))
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in state.items())
    assert any(str(path) in line and "resnet18" in line for line in model.describe())


def test_efficientad_sequential_state_dict_loads_as_a_teacher(tmp_path):
    pdn = PDNSmall(384)
    sequential = {f"{i}.{p}": pdn.state_dict()[f"{name}.{p}"]
                  for i, name in (("0", "conv1"), ("3", "conv2"), ("6", "conv3"), ("8", "conv4"))
                  for p in ("weight", "bias")}
    torch.save(sequential, tmp_path / "teacher_small.pth")
    model = build_method("dfsc", image_size=64, teacher_weights=str(tmp_path / "teacher_small.pth"))
    assert torch.equal(model.teacher.conv2.weight, pdn.conv2.weight)


def test_a_bad_teacher_file_gives_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(TeacherFileError) as info:
        load_teacher(text)
    assert str(text) in str(info.value) and "expected a teacher file" in str(info.value)
    wrong = tmp_path / "student.pt"
    save_teacher(wrong, PDNSmall(768))
    with pytest.raises(TeacherFileError, match="384 output channels"):
        build_method("dfsc", image_size=64, teacher_weights=str(wrong))
    other = tmp_path / "other.pt"
    torch.save({"format": "logicad-model-v1", "state_dict": {}}, other)
    with pytest.raises(TeacherFileError, match="not a teacher file"):
        load_teacher(other)


def test_a_missing_teacher_file_fails_before_training_but_a_saved_model_still_loads(tmp_path):
    missing = str(tmp_path / "gone.pt")
    model = build_method("dfsc", image_size=64, teacher_weights=missing)
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        model.prepare([{"image": torch.randn(1, 3, 64, 64)}])
    source = build_method("dfsc", image_size=64)
    model.load_state_dict(source.state_dict())  # e.g. a registered model scored on another machine
    model.prepare([{"image": torch.randn(1, 3, 64, 64)}])


def test_create_backbone_loads_the_exact_weights_of_a_local_file(tmp_path):
    import timm

    reference = timm.create_model("resnet18").state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    model, source = create_backbone("resnet18", str(path), out_indices=(2, 3))
    assert source == f"file:{path}"
    state = model.state_dict()
    for key in ("conv1.weight", "layer2.0.conv1.weight", "layer3.1.bn2.running_mean"):
        assert torch.equal(state[key], reference[key])
    assert model.feature_info.channels() == [128, 256]
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_backbone("resnet18", str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneWeightsError, match="cannot load"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "junk.pth")
        create_backbone("resnet18", str(tmp_path / "junk.pth"))


def test_create_backbone_random_init_logs_a_warning_once(caplog):
    backbones._WARNED_RANDOM.discard("resnet18")
    with caplog.at_level(logging.WARNING, logger="logicad.models.backbones"):
        _, source = create_backbone("resnet18", None)
        create_backbone("resnet18", None)
    assert source == "random"
    warnings = [r for r in caplog.records if "random init" in r.getMessage()]
    assert len(warnings) == 1 and "resnet18" in warnings[0].getMessage()


def test_loading_a_saved_model_does_not_announce_random_backbones(caplog, tmp_path):
    from logicad.models.base import method_class
    from logicad.pipelines.train.checkpoints import load_model, save_model

    config = method_class("glcf").config_cls.build(
        {"image_size": 64, "backbone": "resnet18", "backbone_weights": "random"}, preset="cpu-synthetic")
    method = build_method("glcf", config)  # a random ResNet-18 teacher
    save_model(tmp_path / "model.pt", method)
    backbones._WARNED_RANDOM.discard("resnet18")
    caplog.clear()  # building `method` above may have announced its random teacher
    with caplog.at_level(logging.WARNING, logger="logicad.models.backbones"):
        load_model(tmp_path / "model.pt")
    assert not [r for r in caplog.records if "random init" in r.getMessage()]
    assert not backbones._RESTORING.get()


def test_random_backbone_features_see_past_the_stem():
    """A frozen random ResNet keeps its residual branches live: a one-pixel change spreads."""
    model, _ = create_backbone("resnet18", None, out_indices=(3,))
    model.eval()
    assert all(float(block.bn2.weight.abs().sum()) > 0 for block in model.layer3)
    image = torch.randn(1, 3, 128, 128)
    moved = image.clone()
    moved[:, :, 64, 64] += 10.0
    with torch.no_grad():
        changed = (model(image)[0] - model(moved)[0]).abs().sum(1)[0] > 1e-6
    assert int(changed.sum()) > 9
    swin, _ = create_backbone("swin_tiny_patch4_window7_224", None, out_indices=(3,))
    assert swin.feature_info.channels() == [768]


def test_create_backbone_from_the_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match="not available offline"):
        create_backbone("resnet18", "hub")
    assert time.perf_counter() - start < 20


def test_distill_teacher_reports_every_step_to_on_step():
    seen = []
    _, history = distill_teacher(_image_batches(), backbone="resnet18", backbone_weights=None, steps=3,
                                 image_size=64, norm_batches=1, on_step=lambda step, loss: seen.append((step, loss)))
    assert seen == list(zip([1, 2, 3], history))


def test_distill_teacher_cli_prints_step_loss_and_eta(tmp_path, capsys):
    import argparse

    import numpy as np
    from logicad.pipelines.train.distill import cmd_distill_teacher
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = argparse.Namespace(images=str(folder), backbone="resnet18", backbone_weights=None, steps=4, image_size=64,
                              batch_size=2, max_images=10, out=str(tmp_path / "t.pth"), cpu=True, log_every=2)
    assert cmd_distill_teacher(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[distill-teacher] step")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]
    assert all(" loss " in line and " ETA " in line for line in lines)
