"""The k-means reference (Amir et al.): K+1 clusters of the frozen encoder's features, fitted on
training images; the cluster on most of the image border is the background."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple

import torch

from partformer.config import at_least
from partformer.methods.base import Method, register_method

from partformer.models.kmeans import KMeansModel, kmeans_torch

__all__ = ["KMeans", "KMeansConfig", "KMeansModel", "kmeans_torch"]


@dataclass
class KMeansConfig:
    fit_images: int = 200             # training images whose feature cells are clustered
    iters: int = 50                   # Lloyd iterations per restart
    restarts: int = 3                 # k-means++ restarts; the lowest inertia is kept

    CHECKS: ClassVar[Dict[str, Tuple[Any, Any]]] = {
        "fit_images": at_least(1), "iters": at_least(1), "restarts": at_least(1)}


@register_method
class KMeans(Method):
    name = "kmeans"
    config_class = KMeansConfig
    trainable = False

    def build_model(self, pretrained: bool = True) -> KMeansModel:
        import dataclasses

        from partformer.models.encoder import build_encoder
        enc = self.cfg.model.encoder
        if not pretrained:
            enc = dataclasses.replace(enc, pretrained=False, weights=None)
        # a randomly initialised encoder (no pretrained weights) must not depend on how much of
        # the global RNG stream was used before (after training vs in tools/eval.py, per rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.experiment.seed)
            encoder = build_encoder(enc, image_size=self.image_size)
        c = self.config
        return KMeansModel(self.num_parts, encoder, fit_images=c.fit_images,
                           seed=self.cfg.experiment.seed, iters=c.iters, restarts=c.restarts)

    def fit(self, model: KMeansModel, dataset, device: torch.device) -> None:
        from partformer.data.transforms import fixed_size
        # images of different sizes (resize modes that keep the aspect ratio) cannot be stacked
        batch_size = self.cfg.eval.batch_size if fixed_size(self.cfg.data.resize) else 1
        model.to(device).fit(dataset, batch_size=batch_size, num_workers=0)

    def floor(self, model, images):
        return model.features(images)
