"""SLSG: self-supervised learning + self-attentive graph convolution (registered as `slsg`).

- `encoder`: ResNet-18 (timm via create_backbone) with SLSG's forward (no maxpool, 16x16 at 256),
  or an ImageNet-initialised EfficientNet-Lite0 (shipped weights) up to stride 16; each encoder
  reports its maps' channels and reductions, which the networks are built from
- `network`: GPT-Net decoder + auxiliary head, PatchGAN discriminator, SegNet (skip attention,
  SG block or plain bottleneck, auxiliary head, decoder)
- `sg_block`: the SG block (dense self-attention + sparse top-K graph with position subtraction)
- `masking`: GPT-Net's grid + large-rectangle inpainting masks
- `loss`: LSGAN, L1/L2, focal on softmax probabilities
- `scoring`: the anomaly probability map and the top-k mean image score
- `method`: `SLSGConfig` and `SLSG(Method)`
"""

from .method import SIMULATION_KEYS, SLSG, SLSGConfig, cosine_factor

__all__ = ["SIMULATION_KEYS", "SLSG", "SLSGConfig", "cosine_factor"]
