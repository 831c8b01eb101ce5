"""Importing logicad, torchvision and timm never aborts, in any order, with the installed pair."""

from __future__ import annotations

import subprocess
import sys

import pytest

CREATE = "import timm; m = timm.create_model('resnet18', features_only=True, out_indices=(2, 3)); print('ok')"

ORDERS = {
    "logicad_then_torchvision_then_timm": f"import logicad.models; import torchvision; {CREATE}",
    "torchvision_then_timm_then_logicad": (
        # the user's own `import torchvision` fails on a mismatched pair (CPU torch + CUDA
        # torchvision); logicad must still work afterwards, and must not abort a working one
        "try:\n    import torchvision\nexcept RuntimeError as e:\n    print('own import failed:', e)\n"
        f"import logicad.models\nimport torchvision\n{CREATE}\n"
        "from logicad.models.backbones import create_backbone; create_backbone('resnet18')"
    ),
    "timm_through_logicad_backbones": "from logicad.models.backbones import create_backbone; "
                                      "create_backbone('resnet18'); import torchvision; print('ok')",
}


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_import_order_exits_cleanly(name):
    result = subprocess.run([sys.executable, "-c", ORDERS[name]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout
    assert "registered multiple times" not in result.stderr


def test_only_the_missing_ops_error_is_repaired():
    """Declaring schemas is a repair for one known failure; it reports which path it took."""
    code = ("import logicad.models.torchvision_ops as t; import torch; print(t.STATUS); "
            "print(torch._C._dispatch_has_kernel_for_dispatch_key('torchvision::nms', 'CPU'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    status, has_kernel = result.stdout.split()[:2]
    # a working torchvision has a real nms kernel and is imported as is; a broken one is repaired
    assert status == ("real" if has_kernel == "True" else "repaired")
