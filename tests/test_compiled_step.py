"""`--compile-step`: the training step through torch.compile gives the eager step's losses and
gradients, methods that are not compilable train eager and say so, bad modes fail clearly."""

from __future__ import annotations

import copy

import logicad.models  # noqa: F401  (torchvision op schemas before timm)
import pytest
import torch

from logicad.models.base import ConfigError, Method, build_method
from logicad.pipelines.train.compiled_step import check_mode, compiled_step


def _images(n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g)


def _steps(model: Method, call, batches: list[dict]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Losses of each step and the last step's gradients, stepping the model's own optimizer."""
    stage = model.stages()[0]
    losses = []
    torch.manual_seed(1)  # the same dropout draws in both runs
    for batch in batches:
        out = call(batch, stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        stage.optimizer.step()
        model.after_step(stage.name)
        losses.append({k: float(v.detach()) for k, v in out.items()})
    return losses, grads


@pytest.mark.parametrize("augment", ["none", "efficientad"])
def test_compiled_dfsc_step_gives_the_eager_losses_and_gradients(augment):
    torch.manual_seed(0)
    eager = build_method("dfsc", image_size=64, batch_size=2, max_steps=10, ae_augment=augment, margin=2.0)
    images = _images(4, 64)
    eager.prepare([{"image": images, "index": torch.arange(4)}])
    compiled = copy.deepcopy(eager)
    batches = [{"image": images[i:i + 2], "index": torch.arange(i, i + 2)} for i in (0, 2)]
    expected, grads = _steps(eager, eager, batches)
    got, compiled_grads = _steps(compiled, compiled_step(compiled, compiled, "aot_eager"), batches)
    for want, have in zip(expected, got):
        assert have == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got[0]["l_dfsc"] > 0  # the hinge is active (margin 2), so its graph is exercised
    # float32 rounding, relative to the whole gradient's norm (a conv bias before InstanceNorm has
    # a gradient of pure rounding noise, ~1e-8, so a per-tensor relative check would test noise)
    scale = float(torch.cat([g.flatten() for g in grads.values()]).norm())
    for name, grad in grads.items():
        assert float((compiled_grads[name] - grad).norm()) <= 1e-5 * scale, name


def test_a_method_whose_step_is_not_compilable_trains_eager_and_says_so(capsys):
    model = build_method("fod", image_size=64)
    assert not type(model).compilable_step
    assert compiled_step(model, model, "default") is model
    assert "not compilable" in capsys.readouterr().out
    assert compiled_step(model, model, "") is model


def test_an_unknown_compile_mode_fails_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="reduce-overhead"):
        check_mode("fast")
