"""torch.hub entry points (any method: the model file says which).

    import torch
    predictor = torch.hub.load("path/to/partformer", "partformer", source="local",
                               checkpoint="runs/<run>/best.pt")        # or a shipped weights name
    out = predictor(image)     # .maps [K+1, H, W] (background last), .labels [H, W]

    official = torch.hub.load("path/to/partformer", "official", source="local",
                              checkpoint="model_best.pth", dataset="cub")  # an authors' file
    model = torch.hub.load("path/to/partformer", "model", source="local",
                           checkpoint="runs/<run>/best.pt")          # the nn.Module only

A GitHub "owner/repo" works the same way once the repository is public (source="github").
``partformer_official`` and ``partformer_model`` are the earlier names of ``official`` and
``model``.
"""
dependencies = ["torch", "torchvision", "timm", "kornia", "cv2", "numpy", "scipy", "yaml",
                "safetensors"]


def partformer(checkpoint: str, device=None, **kwargs):
    """A :class:`partformer.predictor.Predictor` for ``checkpoint`` (a file, a run directory, an
    authors' released file or the name of shipped weights, of any method); ``kwargs`` go to
    ``partformer.load`` (``config``, ``batch_size``, ``resize``, ``precision``, ``overrides``)."""
    from partformer.predictor import load
    return load(checkpoint, device, **kwargs)


def official(checkpoint: str, dataset=None, device=None, **kwargs):
    """A predictor for a method's authors' released checkpoint, converted on the fly;
    ``dataset``: which of their models (detected from the file when omitted)."""
    from partformer.predictor import load
    return load(checkpoint, device, official_dataset=dataset, **kwargs)


def model(checkpoint: str, device=None, **kwargs):
    """The model (``torch.nn.Module``, eval mode) of ``checkpoint``; ``model.predict(images
    [B, 3, S, S] in [0, 1])`` gives the part maps."""
    return partformer(checkpoint, device, **kwargs).model


partformer_official = official
partformer_model = model
