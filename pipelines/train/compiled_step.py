"""The training step under `torch.compile`, generic over methods (`--compile-step MODE`).

The worker calls the (DDP-wrapped) method once per step; with a mode set, that call goes
through `torch.compile` so the forward and its backward run as fused kernels (and, with
`reduce-overhead`, as CUDA graphs). Optimizer steps, schedulers and `after_step` stay eager.
A method opts in with `Method.compilable_step = True` once its `training_step` keeps host
work (Python-side caches, generators, host reads) in `torch.compiler.disable`d helpers and
its losses have static shapes; for the others the flag prints one line and runs eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from logicad.models.base import ConfigError, Method

from ..catalogue import COMPILE_MODES, DEBUG_BACKENDS

#: inductor modes; "eager" and "aot_eager" are torch's debugging backends (trace, no codegen)
MODES = COMPILE_MODES


def check_mode(mode: str) -> None:
    """ConfigError unless `mode` is "" (eager), an inductor mode or a debugging backend."""
    if mode and mode not in MODES + DEBUG_BACKENDS:
        raise ConfigError(f"--compile-step {mode!r}: expected one of {list(MODES + DEBUG_BACKENDS)}")


def compiled_step(module: nn.Module, method: Method, mode: str, announce: bool = True) -> Callable[..., dict]:
    """`module` (the method or its DDP wrapper) compiled for the step, or as is when `mode` is
    empty or the method's step is not compilable."""
    check_mode(mode)
    if not mode:
        return module
    if not type(method).compilable_step:
        if announce:
            print(f"[{method.name}] --compile-step {mode}: this method's training step is not compilable "
                  f"(Method.compilable_step is False); training eager", flush=True)
        return module
    if mode in DEBUG_BACKENDS:
        return torch.compile(module, backend=mode)
    return torch.compile(module, mode=mode)
