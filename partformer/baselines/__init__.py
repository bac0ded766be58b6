"""Training-free reference methods, looked up by name: ``grid`` and ``kmeans``."""
from partformer.baselines.grid import GridBaseline
from partformer.baselines.kmeans import KMeansBaseline

BASELINES = {"grid": GridBaseline, "kmeans": KMeansBaseline}

__all__ = ["BASELINES", "GridBaseline", "KMeansBaseline"]
