"""k-means of frozen encoder features (Amir et al. style): the k-means reference method
(partformer/methods/kmeans) and the pretraining probe.

k-means reference (Amir et al. style): cluster frozen encoder patch features into K+1 clusters.

Features are L2-normalised patch tokens of a frozen timm ViT (random init offline, a local weights
file, or the hub when online). Clusters are fitted on patches of the training split; the cluster that
covers the largest share of the image border is taken as background and moved to the last channel
(so `fg_only` protocols are defined); the remaining clusters keep the order of their sizes.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from partformer.data.collate import collate


def kmeans_torch(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0,
                 restarts: int = 3) -> torch.Tensor:
    """Plain Lloyd k-means with k-means++ seeding on ``x [N, C]``; returns centres ``[k, C]``
    of the restart with the lowest inertia."""
    g = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(len(x), (1,), generator=g)]
        for _ in range(1, k):
            d = torch.cdist(x, centres).min(dim=1).values ** 2
            # fewer distinct points than k: every distance is 0; draw uniformly instead
            probs = d / d.sum() if d.sum() > 0 else torch.ones_like(d)
            centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=g)]])
        for _ in range(iters):
            assign = torch.cdist(x, centres).argmin(dim=1)
            new = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
            new = torch.where(counts > 0, new / counts.clamp(min=1), centres)
            if torch.allclose(new, centres, atol=1e-6):
                centres = new
                break
            centres = new
        inertia = (torch.cdist(x, centres).min(dim=1).values ** 2).sum().item()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


class KMeansModel(torch.nn.Module):
    """A frozen encoder (with ``embed_dim``, the channels of its maps) and K+1 cluster centres of
    its L2-normalised features (``centres [K+1, C]``, a buffer: fitted by :meth:`fit`, saved with
    the model); ``predict`` assigns every cell to its nearest centre, background last, as one-hot
    maps."""

    def __init__(self, num_parts: int, encoder: torch.nn.Module,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 fit_images: int = 200, seed: int = 0, iters: int = 50, restarts: int = 3):
        super().__init__()
        self.num_parts = num_parts
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.fit_images, self.seed, self.iters, self.restarts = fit_images, seed, iters, restarts
        # fitted by fit() and saved with the model
        dim = int(encoder.embed_dim)
        self.register_buffer("centres", torch.zeros(num_parts + 1, dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` L2-normalised patch features of images in [0, 1]."""
        return F.normalize(self.encoder(self.normalize(images)).float(), dim=1)

    @torch.no_grad()
    def fit(self, dataset, batch_size: int = 32, num_workers: int = 0) -> "KMeansModel":
        device = self.mean.device
        n = min(self.fit_images, len(dataset))
        idx = np.random.default_rng(self.seed).permutation(len(dataset))[:n].tolist()
        loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate)
        maps = []
        for batch in loader:
            if "image" not in batch:
                continue
            maps.append(self.features(batch["image"].to(device)).permute(0, 2, 3, 1).cpu())
        if not maps:
            raise ValueError("k-means reference: no image of the fit dataset could be read")
        x = torch.cat([m.reshape(-1, m.shape[-1]) for m in maps])
        centres = kmeans_torch(x, self.num_parts + 1, iters=self.iters, seed=self.seed,
                               restarts=self.restarts)
        # background = the cluster covering most of the feature-map border; counted per batch, as
        # feature maps differ in size between batches when images keep their aspect ratio
        k = len(centres)
        border = torch.zeros(k, dtype=torch.long)
        sizes = torch.zeros(k, dtype=torch.long)
        for m in maps:
            B, h, w, C = m.shape
            assign = torch.cdist(m.reshape(-1, C), centres).argmin(dim=1).view(B, h, w)
            mask = torch.zeros(h, w, dtype=torch.bool)
            mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
            border += torch.bincount(assign[:, mask].reshape(-1), minlength=k)
            sizes += torch.bincount(assign.reshape(-1), minlength=k)
        bg = int(border.argmax())
        fg = [i for i in torch.argsort(sizes, descending=True, stable=True).tolist() if i != bg]
        self.centres.copy_(centres[fg + [bg]].to(device))
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("the k-means reference must be fitted (Method.fit on training "
                               "images) before prediction")
        f = self.features(images)
        B, Cf, h, w = f.shape
        d = torch.cdist(f.permute(0, 2, 3, 1).reshape(B, h * w, Cf),
                        self.centres.unsqueeze(0).expand(B, -1, -1))
        label = d.argmin(dim=-1).view(B, h, w)
        return F.one_hot(label, self.num_parts + 1).permute(0, 3, 1, 2).float()
