"""DFSC: EfficientAD-S with the distinctive feature separation constraint (registered as `dfsc`).

- `network`: PDN-S (shared, `logicad.models.pdn`) and the autoencoder with DFSC's change
- `loss`: L_hard, L_ae/L_stae, the DFSC hinge, quantiles without a size limit
- `scoring`: difference maps, quantile normalisation, sigmoid, padding, resize
- teacher features of training images are computed once (`models/feature_cache.py`)
- `sparse_grad`: the student's last conv with a backward that uses L_hard's sparse gradient
- `method`: `DFSCConfig` and `DFSC(Method)`
"""

from .method import DFSC, DFSCConfig, lr_factor
from .network import Autoencoder, PDNSmall, decoder_sizes, pdn_output_size

__all__ = ["DFSC", "Autoencoder", "DFSCConfig", "PDNSmall", "decoder_sizes", "lr_factor", "pdn_output_size"]
