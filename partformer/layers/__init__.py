"""Building blocks shared by several methods."""
from .part_prototypes import (MODULATIONS, PartPrototypeHead, PartScale, PrototypePartModel,
                              assign_parts, part_features, prototype_logits, sample_gumbel)

__all__ = ["MODULATIONS", "PartPrototypeHead", "PartScale", "PrototypePartModel", "assign_parts",
           "part_features", "prototype_logits", "sample_gumbel"]
