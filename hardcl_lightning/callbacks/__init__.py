"""Evaluation callbacks (online kNN, online linear probe), hard-sample image grids, a progress line, the embedding files of ``hardcl predict``."""

from hardcl_lightning.callbacks.embeddings import EmbeddingWriter
from hardcl_lightning.callbacks.image_grid import GeneratedImageGrid, HVSImageGrid
from hardcl_lightning.callbacks.knn import OnlineKNN, weighted_knn_predict
from hardcl_lightning.callbacks.linear_probe import OnlineLinearProbe
from hardcl_lightning.callbacks.progress import ProgressLine

__all__ = ["EmbeddingWriter", "GeneratedImageGrid", "HVSImageGrid", "OnlineKNN", "OnlineLinearProbe", "ProgressLine", "weighted_knn_predict"]
