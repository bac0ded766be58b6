"""MPAE: Masked Part AutoEncoder (Xia, Wu, Huang, Zhang, Zhang, "Unsupervised Part Discovery via
Descriptor-Based Masked Image Restoration with Optimized Constraints", ICCV 2025), re-implemented
from the facts of the authors' code (github.com/Jiahao-UTS/MPAE, GPL-2.0; not copied).

- :mod:`.config`: the ``mpae:`` section (CUB defaults) and the published runs (``PUBLISHED``);
- :mod:`.model`: ``MPAEModel`` (``forward`` for training, ``predict`` for soft part maps);
- :mod:`.decoder`: ``MaskedPartDecoder`` (restoration from 10% of the patches + part features);
- :mod:`.losses`: the loss terms as pure functions and ``MPAEObjective``;
- :mod:`.augment`: the training augmentation on the device;
- :mod:`.convert`: the authors' checkpoints -> ours;
- :mod:`.method`: the ``Method`` (``method.name=mpae``).
"""
from .config import MPAEConfig
from .method import MPAE, MPAEStep
from .model import MPAEModel

__all__ = ["MPAE", "MPAEConfig", "MPAEModel", "MPAEStep"]
