"""hardcl_lightning: contrastive self-supervised learning from hard samples, on PyTorch Lightning."""

__version__ = "0.1.0"
