"""Compiled scoring (logicad.pipelines.evaluate.compiled): same maps and scores as eager, batch
buckets with padding and splitting, the device default, and the fallback to eager.

Inductor on a CPU compiles C++ for minutes on a shared 2-core machine, so the DFSC
comparison runs through `aot_eager` (dynamo + AOT autograd, the same graph inductor gets)
here and through inductor only in the slow test.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from logicad.models.base import Method, MethodConfig, build_method
from logicad.pipelines.evaluate.compiled import (BUCKETS, Scorer, bucket_for, compile_by_default, eager_scores,
                                                 make_scorer, resolve_compile, split_plan)

TOL = 1e-3
LOGGER = "logicad.pipelines.evaluate.compiled"


@pytest.fixture(scope="module")
def dfsc() -> Method:
    """DFSC at 64 px, random init, prepared and finalized on a few random images."""
    torch.manual_seed(0)
    method = build_method("dfsc", image_size=64)
    images = torch.randn(4, 3, 64, 64)
    method.prepare([{"image": images}])
    method.finalize([{"image": torch.randn(4, 3, 64, 64)}])
    return method.eval()


class Tiny(Method):
    """A one-conv method: cheap to trace, for the fallback tests."""

    name = "tiny-compiled-test"

    def __init__(self) -> None:
        super().__init__(MethodConfig(image_size=16))
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(images))


def _assert_same(got, want) -> None:
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert float((g.float() - w.float()).abs().max()) <= TOL


def test_batches_go_to_the_smallest_bucket_and_large_batches_are_split() -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 5, 16, 17, 256)] == [1, 2, 4, 8, 16, 32, 256]
    assert split_plan(3) == [(0, 3, 4)]
    assert split_plan(600) == [(0, 256, 256), (256, 512, 256), (512, 600, 128)]
    assert split_plan(5, (1, 4)) == [(0, 4, 4), (4, 5, 1)]
    with pytest.raises(ValueError, match="largest bucket 4"):
        bucket_for(5, (1, 4))


def test_compile_is_on_by_default_on_cuda_and_off_on_cpu() -> None:
    assert compile_by_default("cuda") and compile_by_default(torch.device("cuda", 0))
    assert not compile_by_default("cpu")
    assert resolve_compile(None, "cpu") is False and resolve_compile(True, "cpu") is True
    assert resolve_compile(False, "cuda") is False
    method = Tiny()
    on_gpu = Scorer(method, "cuda")  # nothing touches the device before the first call
    assert on_gpu.compiled and on_gpu.mode == "reduce-overhead"
    on_cpu = make_scorer(method, "cpu")
    assert not on_cpu.compiled and on_cpu.mode is None


def test_eager_scorer_gives_the_methods_own_maps_and_scores(dfsc) -> None:
    images = torch.randn(3, 3, 64, 64)
    maps, scores = make_scorer(dfsc, "cpu", compile=False)(images)
    with torch.inference_mode():
        want = dfsc.anomaly_map(images)
    assert torch.equal(maps, want) and torch.equal(scores, dfsc.image_score(want))


def _compare_at_batches(method: Method, backend: str) -> Scorer:
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    scorer = make_scorer(method, "cpu", compile=True, buckets=(1, 4), backend=backend)
    for n in (1, 3, 5):  # 3: padded to 4; 5: split into 4 + 1
        images = torch.randn(n, 3, 64, 64)
        _assert_same(scorer(images), eager_scores(method, images))
    assert scorer.compiled, scorer.fallback_reason
    assert sum(counters["graph_break"].values()) == breaks
    return scorer


def test_compiled_dfsc_scoring_matches_eager_with_padding_and_splitting(dfsc) -> None:
    scorer = _compare_at_batches(dfsc, "aot_eager")
    entries = scorer._state.entries
    assert sorted(key[1] for key in entries) == [1, 4] and all(e.verified for e in entries.values())
    # a second scorer for the same method reuses the compiled buckets (warm-up once per process)
    again = make_scorer(dfsc, "cpu", compile=True, buckets=(1, 4), backend="aot_eager")
    fns = {k: e.fn for k, e in entries.items()}
    images = torch.randn(2, 3, 64, 64)
    _assert_same(again(images), eager_scores(dfsc, images))
    assert {k: e.fn for k, e in again._state.entries.items()} == fns


@pytest.mark.slow
def test_inductor_compiled_dfsc_scoring_matches_eager(dfsc) -> None:
    """Inductor's C++ kernels (minutes of compiling on 2 shared cores)."""
    method = build_method("dfsc", image_size=64)
    method.load_state_dict(dfsc.state_dict())
    scorer = _compare_at_batches(method.eval(), "inductor")
    assert scorer.warmup((1, 4)) < 60  # already compiled: no second warm-up


def test_scorer_refuses_images_of_another_size_naming_it(dfsc) -> None:
    scorer = make_scorer(dfsc, "cpu", compile=True, backend="eager")
    with pytest.raises(ValueError, match="3 x 64 x 64"):
        scorer(torch.randn(2, 3, 32, 32))


def _no_compiler(gm, example_inputs):
    raise RuntimeError("no C++ compiler found")


def _wrong_by_one(gm, example_inputs):
    def run(*args):
        return [out + 1 for out in gm(*args)]

    return run


def test_failing_compile_falls_back_to_eager_with_one_warning(caplog) -> None:
    method = Tiny().eval()
    scorer = make_scorer(method, "cpu", compile=True, backend=_no_compiler)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in (1, 3, 2):
            images = torch.randn(n, 3, 16, 16)
            _assert_same(scorer(images), eager_scores(method, images))
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0] and "eagerly" in warnings[0]
    assert not scorer.compiled and not make_scorer(method, "cpu", compile=True).compiled


def test_compiled_maps_that_differ_from_eager_are_never_returned(caplog) -> None:
    method = Tiny().eval()
    scorer = make_scorer(method, "cpu", compile=True, backend=_wrong_by_one)
    images = torch.randn(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _assert_same(scorer(images), eager_scores(method, images))
        _assert_same(scorer(images), eager_scores(method, images))
    assert not scorer.compiled and "differs from eager" in scorer.fallback_reason
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_default_buckets_are_powers_of_two_up_to_256() -> None:
    assert BUCKETS == tuple(2**i for i in range(9))


@pytest.mark.parametrize("flags, expected", [([], None), (["--compile"], True), (["--no-compile"], False)])
def test_evaluate_and_predict_take_the_compile_switch(flags, expected) -> None:
    from logicad.pipelines.cli import build_parser

    parser = build_parser()
    evaluate = parser.parse_args(["evaluate", "--model", "m", *flags])
    predict = parser.parse_args(["predict", "--model", "m", "--images", "d", *flags])
    assert evaluate.compile is expected and predict.compile is expected


def test_score_batches_scores_through_the_switch(small_loco, category) -> None:
    """The evaluation path gives the same scores eager and through a (cheaply) compiled scorer."""
    from logicad.data import load_split
    from logicad.pipelines.evaluate.scoring import score_batches

    method = build_method("dfsc", image_size=64).eval()
    test = load_split("mvtec_loco", small_loco, category, "test", 64)
    eager = list(score_batches(method, test, torch.device("cpu"), batch_size=4, compile=False))
    assert [i for i, _, _ in eager] == list(range(len(test)))
    compiled_scorer = make_scorer(method, "cpu", compile=True, backend="eager")
    images = torch.stack([test[i]["image"] for i in range(3)])
    maps, scores = compiled_scorer(images)
    assert torch.allclose(scores, torch.tensor([s for _, _, s in eager[:3]]), atol=1e-3)
