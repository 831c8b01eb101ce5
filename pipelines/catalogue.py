"""What the command line offers, in a module that imports nothing heavy, so `logicad --help`
answers at once (building the parser must not import torch). `tests/test_cli.py` checks that
this catalogue equals the method registry and the modules that own each list."""

from __future__ import annotations

#: --method of train and tune: name -> what it is (the registry's trainable methods)
METHODS: dict[str, str] = {
    "dfsc": "EfficientAD-S with DFSC's hinge (student-teacher + autoencoder)",
    "glcf": "global-local correspondence with a semantic bottleneck",
    "slsg": "GPT-Net inpainting pre-training, then SegNet with the SG block",
    "fod": "intra/inter-correlation transformers, minimax objective",
    "patchcore": "memory bank of pretrained patch features, nearest-neighbour distance (no training)",
    "global_gaussian": "Gaussian of pooled pretrained image descriptors, Mahalanobis distance (no training)",
}
#: named presets per method (`--preset`)
PRESETS: dict[str, tuple[str, ...]] = {
    "dfsc": ("cpu-synthetic", "cpu-synthetic-pdn"), "glcf": ("cpu-synthetic",), "slsg": ("cpu-synthetic",), "fod": ("cpu-synthetic",),
    "patchcore": (), "global_gaussian": (),
}
#: objectives of a sweep (`tune --objective`)
OBJECTIVES = ("synthetic", "test")
#: torch.compile modes of the training step (`train --compile-step`), and debug backends
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEBUG_BACKENDS = ("eager", "aot_eager")


def methods_help() -> str:
    """'dfsc (presets: cpu-synthetic): ...; glcf ...' for --method's help."""
    return "; ".join(f"{name} ({'presets: ' + ', '.join(PRESETS[name]) if PRESETS[name] else 'no presets'}): "
                     f"{what}" for name, what in METHODS.items())
