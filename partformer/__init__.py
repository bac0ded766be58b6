"""partformer: unsupervised part discovery; PartFormer (Xia et al., TPAMI 2024) and the methods
it is compared with, under the published protocols.

Public API (README "Use it from Python")::

    import partformer
    predictor = partformer.load("runs/<run>/best.pt")   # or a run dir, shipped weights by name,
                                                       # or the authors' model_best.pth
    out = predictor("photo.jpg")                       # .maps [K+1, H, W] (background last),
                                                       # .labels [H, W] (K = background)
    predictor = partformer.load("hf://<user>/<repo>")  # a Hugging Face Hub model (its cache
                                                       # offline); also from_pretrained()
    partformer.save_pretrained("runs/<run>/best.pt", "folder")   # model-only + config + card
    partformer.push_to_hub("runs/<run>/best.pt", "<user>/<repo>")
    cfg = partformer.load_config("configs/cub_k4.yaml", ["model.num_parts=8"])
    model = partformer.build_model(cfg)                # the model of cfg.method.name

The names are imported on first use, so ``import partformer`` stays light (no torch / timm).
"""
__version__ = "0.2.0"

__all__ = ["__version__", "load", "build_model", "load_config", "Predictor", "Prediction",
           "available_weights", "method_names", "from_pretrained", "save_pretrained",
           "push_to_hub"]

_LAZY = {
    "load": ("partformer.predictor", "load"),
    "from_pretrained": ("partformer.predictor", "from_pretrained"),
    "save_pretrained": ("partformer.hub", "save_pretrained"),
    "push_to_hub": ("partformer.hub", "push_to_hub"),
    "Predictor": ("partformer.predictor", "Predictor"),
    "Prediction": ("partformer.predictor", "Prediction"),
    "build_model": ("partformer.methods", "build_model"),
    "load_config": ("partformer.config", "load_config"),
    "available_weights": ("partformer.weights", "available_weights"),
    "method_names": ("partformer.methods", "method_names"),
}


_SUBMODULES = ("viz", "hub", "config", "predictor", "methods", "weights", "hf")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"partformer.{name}")
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'partformer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + list(_SUBMODULES))
