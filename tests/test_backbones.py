"""Backbone weight sources: the shipped ImageNet EfficientNet-Lite0 converts exactly onto timm's
model, full state dicts load into feature models, inputs are renormalised to the model's own
pretrained config, bad weights fail in one line before Ray starts, and a saved model reloads in a
fresh process without reading the weights source again."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from logicad.models import backbones as B
from logicad.models.backbones import SHIPPED, BackboneWeightsError, create_backbone, read_weights
from logicad.models.torchvision_ops import import_timm
from logicad.pipelines.cli import main

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return read_weights(LITE0, "imagenet-lite0")


def _full_lite0(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = import_timm().create_model(LITE0)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_shipped_lite0_maps_every_tensor_onto_timms_names_and_shapes(lite0_state):
    reference = import_timm().create_model(LITE0).state_dict()
    assert len(lite0_state) == len(reference) == 296
    assert {k: v.shape for k, v in lite0_state.items()} == {k: v.shape for k, v in reference.items()}


@pytest.mark.parametrize("size", [128, 224])
def test_shipped_lite0_logits_equal_the_weight_authors_reference_implementation(lite0_state, size):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(SHIPPED["imagenet-lite0"].path()))
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        assert torch.allclose(_full_lite0(lite0_state)(images), reference.eval()(images), atol=1e-5, rtol=0)


def test_a_feature_model_takes_the_full_state_dict_and_renormalises_imagenet_input(lite0_state):
    features, source = create_backbone(LITE0, "imagenet-lite0", out_indices=(2, 3))
    assert "imagenet-lite0" in source
    plain = import_timm().create_model(LITE0, features_only=True, out_indices=(2, 3), pretrained=True,
                                       pretrained_cfg_overlay={"state_dict": lite0_state}).eval()
    imagenet_normalised = torch.randn(1, 3, 128, 128)
    raw = imagenet_normalised * torch.tensor(B.IMAGENET_STD)[:, None, None] + torch.tensor(B.IMAGENET_MEAN)[:, None, None]
    mean, std = B.input_normalisation(LITE0)
    assert mean == std == (0.5, 0.5, 0.5)  # from timm's pretrained config of the tf_ port
    with torch.no_grad():
        got = features.eval()(imagenet_normalised)
        expected = plain((raw - 0.5) / 0.5)
    assert [g.shape[1] for g in got] == [40, 112]
    assert all(torch.allclose(g, e, rtol=1e-4, atol=1e-4) for g, e in zip(got, expected)), \
        [float((g - e).abs().max()) for g, e in zip(got, expected)]


def test_a_resnet_expects_imagenet_normalisation_and_gets_no_hook():
    assert B.renormaliser("resnet18") is None


def test_shipped_weights_for_another_architecture_fail_in_one_line():
    with pytest.raises(BackboneWeightsError, match=f"'imagenet-lite0' are for {LITE0}, not resnet18") as info:
        create_backbone("resnet18", "imagenet-lite0")
    assert "\n" not in str(info.value)


def test_a_truncated_weights_file_fails_in_one_line_naming_it(tmp_path, lite0_state):
    path = tmp_path / "lite0.pth"
    torch.save(lite0_state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(BackboneWeightsError, match="lite0.pth: cannot read") as info:
        create_backbone(LITE0, str(path))
    assert "\n" not in str(info.value)


def test_a_file_of_another_architecture_fails_naming_the_keys_it_does_not_have(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(import_timm().create_model("resnet18").state_dict(), path)
    with pytest.raises(BackboneWeightsError, match=f"keys {LITE0} does not have: \\['conv1.weight'"):
        create_backbone(LITE0, str(path))


def test_a_shipped_file_with_missing_tensors_is_refused(monkeypatch, tmp_path, lite0_state):
    source = torch.load(SHIPPED["imagenet-lite0"].path(), map_location="cpu", weights_only=True)
    path = tmp_path / "models" / "short.pth"
    path.parent.mkdir()
    torch.save(dict(list(source.items())[:-2]), path)
    monkeypatch.setitem(SHIPPED, "short", dataclasses.replace(SHIPPED["imagenet-lite0"], file="models/short.pth"))
    monkeypatch.setattr(B.ShippedWeights, "path", lambda self: tmp_path / self.file)
    with pytest.raises(BackboneWeightsError, match="294 tensors, tf_efficientnet_lite0 has 296"):
        create_backbone(LITE0, "short")


def test_bad_backbone_weights_fail_before_ray_starts(capsys, small_loco, category, tmp_path):
    import ray

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    code = main(["train", "--method", "fod", "--data", str(small_loco), "--category", category, "--set",
                 f"backbone={LITE0}", "--set", f"backbone_weights={junk}", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "backbone_weights" in err and "junk.pth" in err
    assert not ray.is_initialized() and not (tmp_path / "o").exists()


RELOAD = """
import dataclasses, json, sys, torch
from logicad.models import backbones
backbones.SHIPPED["imagenet-lite0"] = dataclasses.replace(backbones.SHIPPED["imagenet-lite0"], file="gone.pth")
from logicad.pipelines.train.checkpoints import load_model
method = load_model(sys.argv[1])
images = torch.load(sys.argv[2])
with torch.no_grad():
    print(json.dumps(method.image_score(method.anomaly_map(images)).tolist()))
"""


def test_a_saved_model_reloads_in_a_fresh_process_without_reading_the_weights_package(tmp_path, small_loco, category):
    from logicad.models.base import build_method
    from logicad.models.fod.method import FODConfig
    from logicad.pipelines.train.checkpoints import save_model
    from logicad.data import load_split
    from torch.utils.data import DataLoader

    config = FODConfig.build({"backbone": LITE0, "backbone_weights": "imagenet-lite0", "image_size": 64,
                              "strides": (16,), "d_model": (32,), "heads": 2, "layers": 1, "batch_size": 2},
                             preset=None)
    method = build_method("fod", config)
    train = load_split("mvtec_loco", small_loco, category, "train", 64)
    method.prepare(DataLoader(train, batch_size=4))
    method.finalize(DataLoader(train, batch_size=4))
    images = torch.stack([train[i]["image"] for i in range(3)])
    with torch.no_grad():
        expected = method.eval().image_score(method.anomaly_map(images)).tolist()
    save_model(tmp_path / "model.pt", method)
    torch.save(images, tmp_path / "images.pt")
    out = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "model.pt"), str(tmp_path / "images.pt")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
    assert "random init" not in out.stderr
