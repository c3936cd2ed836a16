"""Evaluation callbacks (online kNN, online linear probe) and hard-sample image grids."""

from hardcl_lightning.callbacks.image_grid import GeneratedImageGrid, HVSImageGrid
from hardcl_lightning.callbacks.knn import OnlineKNN, weighted_knn_predict
from hardcl_lightning.callbacks.linear_probe import OnlineLinearProbe

__all__ = ["GeneratedImageGrid", "HVSImageGrid", "OnlineKNN", "OnlineLinearProbe", "weighted_knn_predict"]
