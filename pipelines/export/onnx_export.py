"""`logicad export --format onnx`: one ONNX graph per model, checked against torch, written whole.

Exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript tracer. It exports every
method as it is: the tracer runs the methods' own `score` (host reads such as `bool(self.finalized)`
and `inference_mode` blocks are evaluated once, at trace time, on a finalised model, where they
are constants). The dynamo exporter (`torch.export`) refuses those host reads (DFSC, GLCF, FOD,
global_gaussian, the fusion) and specialises PatchCore's batch to the traced one. One op needs a
translation of our own: the fusion's antialiased bilinear downsizing (`aten::_upsample_bilinear2d_aa`,
which the tracer's opset 18 table lacks) is ONNX `Resize` with `antialias=1` and
`exclude_outside=1`, which onnxruntime computes as torch does.

Precision: the graph computes in float32. A model whose config scores under bf16 autocast
(DFSC's `cpu-synthetic` preset) would otherwise trace bf16 casts that onnxruntime's CPU kernels
cannot run; such a model is exported, and its parity checked, with `precision` "32", and
contract.json records the model's own precision.

The folder is built as `<out>.tmp-<pid>` and renamed to `<out>` only after parity passed, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from logicad.data import AnomalyDataset
from logicad.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from logicad.models.base import Method

from .contract import CONTRACT_FILE, MODEL_FILE, PARITY_FILE, build_contract
from .errors import ExportError
from .graph import INPUT, OUTPUTS, ExportGraph, example_input
from .onnx_scoring import OnnxScorer
from .parity import TOLERANCE, check_parity

OPSET = 18
EXPORTER = "torch.onnx.export, TorchScript tracer (dynamo=False)"


def _resize_antialiased(g, x, output_size, align_corners, scales_h=None, scales_w=None):
    """ONNX for `F.interpolate(..., mode="bilinear", antialias=True, align_corners=False)`."""
    from torch.onnx import symbolic_helper

    size = symbolic_helper._maybe_get_const(output_size, "is")
    if symbolic_helper._maybe_get_const(align_corners, "b") or not isinstance(size, (list, tuple)):
        return symbolic_helper._unimplemented("_upsample_bilinear2d_aa", "align_corners=True or a dynamic size",
                                              x)
    sizes = g.op("Constant", value_t=torch.tensor(list(size), dtype=torch.int64))
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", x, empty, empty, sizes, axes_i=[2, 3], mode_s="linear", antialias_i=1,
                exclude_outside_i=1, coordinate_transformation_mode_s="half_pixel")


@contextlib.contextmanager
def _stdout_discarded():
    """File descriptor 1 to /dev/null for the block (C++ writes too, which redirect_stdout misses)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def export_onnx(method: Method, path: Path, opset: int = OPSET) -> None:
    """Write `method` (as `ExportGraph`) to `path`; ExportError in one line naming the method
    and the exporter's first error line (an unsupported op names the op)."""
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _resize_antialiased, opset)
    graph = ExportGraph(method.cpu()).eval()
    dynamic = {name: {0: "N"} for name in (INPUT, *OUTPUTS)}
    try:
        # quiet: one TracerWarning per host read (expected, see the module doc); on failure the
        # exporter's C++ log prints the whole traced graph to stdout: the error line says what matters
        with warnings.catch_warnings(), torch.no_grad(), _stdout_discarded():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example_input(method.config.image_size),), str(path), dynamo=False,
                              opset_version=opset, input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes=dynamic, do_constant_folding=True)
        import onnx

        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001  (the exporter raises many types: UnsupportedOperatorError, ...)
        raise ExportError(f"{method.name}: cannot export to ONNX ({_first_line(exc)})") from None


def float32_scoring(method: Method) -> str | None:
    """Switch `method` and any member methods (a fusion's) to float32 scoring (see the module
    doc); the precision they had when any was not "32" (e.g. "bf16")."""
    changed = []
    for part in method.modules():
        precision = str(getattr(getattr(part, "config", None), "precision", "32"))
        if isinstance(part, Method) and precision != "32":
            part.config = part.config.replace(precision="32")
            changed.append(precision)
    return ",".join(sorted(set(changed))) or None


def default_out(method: str, category: str | None) -> Path:
    """`outputs/export/<method>-<category>-<UTC time>` (suffixed -2, -3, ... if taken)."""
    from ..train.run_dirs import new_timestamped_folder

    return new_timestamped_folder(Path("outputs/export"), f"{method}-{category or 'data'}", utc=True)


def check_out(out: Path) -> None:
    """An existing non-empty --out is refused (nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder (nothing is overwritten)")


def export_model(method: Method, payload: dict[str, Any], source: str, category: str | None, out: Path,
                 splits: dict[str, AnomalyDataset], opset: int = OPSET, batch_size: int = 8,
                 tolerance: float = TOLERANCE) -> dict[str, Any]:
    """model.onnx, contract.json and parity.json in `out` (built aside, renamed at the end);
    the parity report. Parity failing raises ExportError and leaves nothing. `method` is switched to
    float32 scoring (`float32_scoring`)."""
    check_out(out)
    if not any(len(data) for data in splits.values()):
        raise ExportError(f"{method.name}: no validation or test images to check parity on")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model_precision = float32_scoring(method)
        export_onnx(method, tmp / MODEL_FILE, opset)
        contract = build_contract(method.name, method.config.image_size, category, source, opset, EXPORTER,
                                  payload, IMAGENET_MEAN, IMAGENET_STD)
        contract["precision"] = {"graph": "float32", "model": model_precision or "32",
                                 "parity_against": "the torch model scoring in float32"}
        (tmp / CONTRACT_FILE).write_text(json.dumps(contract, indent=2))
        report = check_parity(method, OnnxScorer(tmp), splits, batch_size, tolerance)
        if not report["pass"]:
            error = ExportError(f"{method.name}: ONNX parity failed: {failure(report)}; nothing written")
            error.report = report  # the caller may record the failed check (registry tags)
            raise error
        (tmp / PARITY_FILE).write_text(json.dumps(report, indent=2))
        if out.exists():
            out.rmdir()  # empty (check_out); rename needs the name free
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def failure(report: dict[str, Any]) -> str:
    """What failed, in a few words: 'map max rel diff 3.1e-03 > 1e-04; score ranking differs'."""
    parts = []
    for name, result in report["outputs"].items():
        if result["max_rel_diff"] > report["tolerance"]:
            parts.append(f"{name} max rel diff {result['max_rel_diff']:.2e} > {report['tolerance']:g}")
        if result.get("ranking_equal") is False:
            parts.append(f"{name} ranking differs")
    return "; ".join(parts) or "unknown"


def summary(report: dict[str, Any]) -> str:
    """'parity on 24 images: map max abs diff 1.2e-07 (rel 3.1e-08), score ... , same ranking: pass'."""
    outputs = report["outputs"]
    text = ", ".join(f"{name} max abs diff {r['max_abs_diff']:.2e} (rel {r['max_rel_diff']:.2e})"
                     for name, r in outputs.items())
    ranking = "same ranking" if outputs["score"]["ranking_equal"] else "ranking differs"
    return f"parity on {report['n_images']} images: {text}, {ranking}: {'pass' if report['pass'] else 'FAIL'}"
