"""Evaluation callbacks: online kNN and online linear probe."""

from hardcl_lightning.callbacks.knn import OnlineKNN, weighted_knn_predict
from hardcl_lightning.callbacks.linear_probe import OnlineLinearProbe

__all__ = ["OnlineKNN", "OnlineLinearProbe", "weighted_knn_predict"]
