"""torch.hub entry points.

    import torch
    predictor = torch.hub.load("path/to/partformer", "partformer", source="local",
                               checkpoint="runs/<run>/best.pt")        # or a shipped weights name
    out = predictor(image)     # .maps [K+1, H, W] (background last), .labels [H, W]

    official = torch.hub.load("path/to/partformer", "partformer_official", source="local",
                              checkpoint="model_best.pth", dataset="cub")  # the authors' file
    model = torch.hub.load("path/to/partformer", "partformer_model", source="local",
                           checkpoint="runs/<run>/best.pt")          # the nn.Module only

A GitHub "owner/repo" works the same way once the repository is public (source="github").
"""
dependencies = ["torch", "torchvision", "timm", "kornia", "cv2", "numpy", "scipy", "yaml",
                "safetensors"]


def partformer(checkpoint: str, device=None, **kwargs):
    """A :class:`partformer.predictor.Predictor` for ``checkpoint`` (a file, a run directory or
    the name of shipped weights); ``kwargs`` go to ``partformer.load`` (``config``,
    ``batch_size``, ``resize``, ``precision``, ``overrides``)."""
    from partformer.predictor import load
    return load(checkpoint, device, **kwargs)


def partformer_official(checkpoint: str, dataset=None, device=None, **kwargs):
    """A predictor for the authors' released ``model_best.pth`` / ``checkpoint.pth``, converted on
    the fly; ``dataset``: ``cub`` or ``celeba`` (detected from the file when omitted)."""
    from partformer.predictor import load
    return load(checkpoint, device, official_dataset=dataset, **kwargs)


def partformer_model(checkpoint: str, device=None, **kwargs):
    """The ``PartFormerModel`` (``torch.nn.Module``, eval mode) of ``checkpoint``;
    ``model.predict(images [B, 3, S, S] in [0, 1])`` gives the part maps."""
    return partformer(checkpoint, device, **kwargs).model
