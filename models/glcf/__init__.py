"""GLCF: global-local correspondence with a semantic bottleneck (registered as `glcf`).

- `network`: the frozen timm teacher (taps by stride), MS-PEM + SAM (`ps|pgs|pss`), the
  Swin-Unet-style and ResNet up-sampling decoders
- `loss`: l_E^L + l_C + l_E^G with `l2` (averaged squared error) or `cos` distances
- `scoring`: standardisation, branch/scale fusion, Gaussian smoothing, std image score
- `method`: `GLCFConfig` and `GLCF(Method)`
"""

from .method import GLCF, GLCFConfig, lr_factor
from .network import SemanticBottleneck, Teacher, build_decoder, sincos_position_encoding

__all__ = ["GLCF", "GLCFConfig", "SemanticBottleneck", "Teacher", "build_decoder", "lr_factor",
           "sincos_position_encoding"]
