"""The grid reference: the ground-truth box split into K cells (an oracle-box partition: anything a
method discovers should beat a partition that only knows where the object is)."""
from typing import Any, Mapping

import torch

from partformer.methods.base import Method, register_method

from .model import GridModel, grid_part_maps, grid_shape

__all__ = ["Grid", "GridModel", "grid_part_maps", "grid_shape"]


@register_method
class Grid(Method):
    name = "grid"
    trainable = False
    supervision = "ground-truth box"

    def build_model(self, pretrained: bool = True) -> GridModel:
        return GridModel(self.num_parts)

    def predict(self, model: GridModel, batch: Mapping[str, Any]) -> torch.Tensor:
        if "bbox" not in batch:
            raise ValueError("the grid reference needs ground-truth boxes (`bbox`) in the "
                             "dataset; images without annotations have none")
        return model.predict(batch["image"], batch["bbox"])

    def floor(self, model, images):
        return None
