"""Compiled scoring for any method: maps and image scores from one `torch.compile`d function.

    scorer = make_scorer(method, device)              # compile: on by default on CUDA only
    scorer.warmup()                                   # optional: compile every bucket now
    maps, scores = scorer(images)                     # B x 1 x H x W, B; same as eager

What the compiled path does, and why:

- **Static shapes, batch buckets.** A batch of n images is zero-padded up to the smallest
  bucket >= n (1, 2, 4, ..., 256); larger batches are split into chunks of the largest
  bucket. Only those shapes ever compile (`dynamic=False`); the padding is sliced off.
- **Once per process.** Compiled functions are cached per (method object, device, bucket,
  backend, mode): a second `make_scorer` for the same method reuses them. Each gets its own
  code object, so every bucket owns its dynamo cache entry (no recompile limit is hit, and
  a call checks one guard set).
- **CUDA graphs on CUDA only** (`mode="reduce-overhead"`); outputs are cloned out of the
  graph's static memory before the next replay. Precision is the method's own (DFSC runs
  its bf16 autocast when `precision` is "bf16"), identical in both paths.
- **Never silently wrong.** The first call of every compiled bucket is checked against
  the eager maps and scores (`atol` 1e-3). A compile error (e.g. no C++ compiler for
  inductor), a runtime error or a mismatch switches the method to eager scoring with one
  logged warning; graph breaks are logged once.
- **What is traced.** A method's `anomaly_map` may read the host (DFSC and GLCF check
  `bool(self.finalized)` to warn once: a device sync per call on a GPU, and a graph break)
  and may open `torch.inference_mode()` inside (AOT autograd cannot trace buffers in
  one). The scorer therefore runs `anomaly_map` eagerly on each bucket's first batch (the
  check and its warning happen there, once) and traces, in order of preference: the
  method's own `traceable_maps(images)` (anomaly_map without host reads, warnings or
  inference_mode; the caller is in eval and inference mode), an adapter in `ADAPTERS`
  (DFSC's below), else `anomaly_map` itself (graph breaks and compile errors are then
  logged and handled as above).
"""

from __future__ import annotations

import logging
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from logicad.models.base import Method

log = logging.getLogger(__name__)

BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: compiled maps and scores must match eager within this (maps are in the method's units)
ATOL = 1e-3

MapsFn = Callable[[torch.Tensor], torch.Tensor]


def compile_by_default(device: torch.device | str) -> bool:
    """The default of `--compile/--no-compile`: on for CUDA, off elsewhere (inductor on a CPU
    compiles C++ for minutes and gains little)."""
    return torch.device(device).type == "cuda"


def resolve_compile(compile: bool | None, device: torch.device | str) -> bool:
    """`compile` as asked, or the device's default when None."""
    return compile_by_default(device) if compile is None else bool(compile)


def bucket_for(n: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket holding `n` images (n <= the largest bucket)."""
    for bucket in sorted(buckets):
        if bucket >= n:
            return bucket
    raise ValueError(f"batch of {n} is larger than the largest bucket {max(buckets)}")


def split_plan(n: int, buckets: tuple[int, ...] = BUCKETS) -> list[tuple[int, int, int]]:
    """(start, stop, bucket) chunks covering n images: full chunks of the largest bucket,
    then the rest padded up to its bucket."""
    largest = max(buckets)
    return [(start, min(start + largest, n), bucket_for(min(largest, n - start), buckets))
            for start in range(0, n, largest)]


# --- what is traced -------------------------------------------------------------------------
def _dfsc_maps(method: Method, images: torch.Tensor) -> torch.Tensor:
    """DFSC's `anomaly_map` as a pure tensor function: `raw_maps` + `scoring.combine`
    without the `bool(self.finalized)` host read and without raw_maps' inference_mode block
    (the scorer runs in eval and inference mode, so the maps are the same)."""
    from logicad.models.dfsc import scoring

    x = method._input(images)
    with method._scoring_autocast(x.device):
        parts = (method._teacher_features(x), method.student_ema(x), method.autoencoder(x))
        map_st, map_ae = scoring.difference_maps(*parts)
    return scoring.combine(map_st, map_ae, method.q_st, method.q_ae, tuple(images.shape[-2:]))


#: method name -> pure maps function for methods that do not (yet) offer `traceable_maps`
ADAPTERS: dict[str, Callable[[Method, torch.Tensor], torch.Tensor]] = {"dfsc": _dfsc_maps}


def traceable_maps(method: Method) -> MapsFn:
    """The function the compiled path traces for `method` (see the module docstring)."""
    own = getattr(method, "traceable_maps", None)
    if callable(own):
        return own
    if method.name in ADAPTERS:
        adapter = ADAPTERS[method.name]
        return lambda images: adapter(method, images)
    return method.anomaly_map


# --- the per-process cache ------------------------------------------------------------------
@dataclass
class _Compiled:
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    verified: bool = False
    compile_s: float | None = None


@dataclass
class _MethodState:
    method: Method  # kept alive with its entries: ids stay valid for the process
    entries: dict[tuple, _Compiled]
    eager_reason: str | None = None  # set once compiling failed or mismatched: eager from then on
    graph_breaks_logged: bool = False


_STATE: dict[int, _MethodState] = {}


def _state(method: Method) -> _MethodState:
    state = _STATE.get(id(method))
    if state is None or state.method is not method:
        state = _STATE[id(method)] = _MethodState(method, {})
    return state


def _own_code(fn: Callable, name: str) -> Callable:
    """`fn` with a code object of its own: dynamo keeps compiled graphs per code object, so each
    bucket gets its own cache entry instead of all sharing (and exhausting) one."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _score_function(method: Method, maps_fn: MapsFn):
    own = type(method).score is not Method.score  # its image score is not a function of its map

    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if own:
            return method.score(images)
        maps = maps_fn(images)
        return maps, method.image_score(maps)

    return score


def eager_scores(method: Method, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps, scores) from the method's own `score` (`anomaly_map` and `image_score`), inference mode."""
    with torch.inference_mode():
        return method.score(images)


class Scorer:
    """Callable `images -> (maps, scores)` for `method` on `device`, compiled or eager.

    compile: None = `compile_by_default(device)`. backend/mode: `torch.compile`'s (mode None
    = "reduce-overhead" on CUDA, the default elsewhere). buckets: the batch sizes compiled.
    """

    def __init__(self, method: Method, device: torch.device | str, compile: bool | None = None,
                 buckets: tuple[int, ...] = BUCKETS, backend: Any = "inductor", mode: str | None = None,
                 atol: float = ATOL) -> None:
        self.method = method
        self.device = torch.device(device)
        self.compile = resolve_compile(compile, self.device)
        self.buckets = tuple(sorted(set(buckets)))
        self.backend = backend
        self.mode = mode if mode is not None else ("reduce-overhead" if self.device.type == "cuda" else None)
        self.atol = atol
        self._state = _state(method)

    @property
    def compiled(self) -> bool:
        """True while scoring goes through compiled functions (False after a fallback)."""
        return self.compile and self._state.eager_reason is None

    @property
    def fallback_reason(self) -> str | None:
        return self._state.eager_reason

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method.training:
            self.method.eval()
        images = images.to(self.device)
        if not self.compiled:
            return eager_scores(self.method, images)
        self._check_shape(images)
        maps, scores = [], []
        for start, stop, bucket in split_plan(images.shape[0], self.buckets):
            chunk_maps, chunk_scores = self._bucket_call(images[start:stop], bucket)
            maps.append(chunk_maps)
            scores.append(chunk_scores)
        if len(maps) == 1:
            return maps[0], scores[0]
        return torch.cat(maps), torch.cat(scores)

    def warmup(self, buckets: tuple[int, ...] | None = None) -> float:
        """Compile (and check) `buckets` (default: all) now; seconds taken. Seeded random images
        (the scale of ImageNet-normalised ones) are scored, three times each on CUDA so CUDA
        graphs get recorded. Not zeros: inductor's CPU kernels for a channels_last DFSC were
        seen to differ from eager by 2e-2 on exactly-zero images only (1e-7 on random, 9e-6
        on constant -2 = black), and the first-call check should see representative values."""
        size = self.method.config.image_size
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for bucket in buckets or self.buckets:
            images = torch.randn(bucket, 3, size, size, generator=generator).to(self.device)
            for _ in range(3 if self.device.type == "cuda" else 1):
                self(images)
        _sync(self.device)
        return time.perf_counter() - start

    # --- internals ----------------------------------------------------------------------
    def _check_shape(self, images: torch.Tensor) -> None:
        size = self.method.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"{self.method.name} scores B x 3 x {size} x {size} images (image_size {size}), "
                             f"got {tuple(images.shape)}")

    def _entry(self, bucket: int) -> _Compiled:
        key = (str(self.device), bucket, str(self.backend), self.mode)
        entry = self._state.entries.get(key)
        if entry is None:
            score = _own_code(_score_function(self.method, traceable_maps(self.method)),
                              f"score_{self.method.name}_b{bucket}")
            fn = torch.compile(score, dynamic=False, backend=self.backend, mode=self.mode)
            entry = self._state.entries[key] = _Compiled(fn)
        return entry

    def _bucket_call(self, images: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        padded = images.contiguous()
        if bucket > n:
            padded = torch.cat([padded, padded.new_zeros((bucket - n, *padded.shape[1:]))])
        entry = self._entry(bucket)
        if entry.verified:
            try:
                return self._run(padded, n, entry)
            except Exception as exc:  # e.g. a CUDA graph replay failing later
                self._fall_back(_failure(exc))
                return eager_scores(self.method, images)
        reference = eager_scores(self.method, images)  # also runs the method's host-side checks, once
        breaks, start = _graph_breaks(), time.perf_counter()
        try:
            got = self._run(padded, n, entry)
        except Exception as exc:  # compile errors come in many types (InductorError, BackendCompilerFailed, ...)
            self._fall_back(_failure(exc))
            return reference
        entry.compile_s = time.perf_counter() - start
        self._check_graph_breaks(breaks)
        if not self._matches(bucket, got, reference):
            return reference
        entry.verified = True
        return got

    def _run(self, padded: torch.Tensor, n: int, entry: _Compiled) -> tuple[torch.Tensor, torch.Tensor]:
        graphs = self.device.type == "cuda" and self.mode in ("reduce-overhead", "max-autotune")
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode():
            maps, scores = entry.fn(padded)
        maps, scores = maps[:n], scores[:n]
        if graphs:  # outputs live in the graph's static memory, overwritten by the next replay
            maps, scores = maps.clone(), scores.clone()
        return maps, scores

    def _matches(self, bucket: int, got: tuple[torch.Tensor, torch.Tensor],
                 want: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Compiled vs eager within `atol`; else fall back (with the differences in the warning)."""
        if any(g.shape != w.shape for g, w in zip(got, want)):
            self._fall_back(f"compiled scoring gives shapes {[tuple(g.shape) for g in got]}, eager "
                            f"{[tuple(w.shape) for w in want]} at bucket {bucket}")
            return False
        diffs = [float((g.float() - w.float()).abs().max()) if g.numel() else 0.0 for g, w in zip(got, want)]
        if not all(d <= self.atol for d in diffs):  # NaN fails too
            self._fall_back(f"compiled scoring differs from eager at bucket {bucket} (max abs diff maps "
                            f"{diffs[0]:.2e}, scores {diffs[1]:.2e}; tolerance {self.atol:g})")
            return False
        log.debug("%s: compiled bucket %d matches eager (max abs diff %.2e)", self.method.name, bucket, diffs[0])
        return True

    def _fall_back(self, reason: str) -> None:
        if self._state.eager_reason is None:
            self._state.eager_reason = reason
            log.warning("%s: %s; scoring eagerly from now on", self.method.name, reason)

    def _check_graph_breaks(self, before: dict[str, int]) -> None:
        after = _graph_breaks()
        new = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
        if new and not self._state.graph_breaks_logged:
            self._state.graph_breaks_logged = True
            log.warning("%s: compiled scoring has graph breaks (slower; a `traceable_maps` method avoids them): %s",
                        self.method.name, "; ".join(k[:160] for k in new))


def _failure(exc: Exception) -> str:
    """One line naming the error (a backend's own error, not dynamo's wrapper, when there is one)."""
    cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
    first_line = (str(cause).strip().splitlines() or [""])[0][:300]
    return f"torch.compile failed ({type(exc).__name__}: {type(cause).__name__}: {first_line})"


def _graph_breaks() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_scorer(method: Method, device: torch.device | str, compile: bool | None = None, **options: Any) -> Scorer:
    """A `Scorer` (callable images -> (maps, scores)); `options` go to `Scorer`."""
    return Scorer(method, device, compile, **options)
