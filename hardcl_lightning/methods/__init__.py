"""Base methods and hard-sample methods, all on the ``embed`` / ``pair_loss`` contract."""

from hardcl_lightning.methods.base import BaseMethod, MomentumMethod
from hardcl_lightning.methods.mocov2 import MoCoV2
from hardcl_lightning.methods.simclr import SimCLR

__all__ = ["BaseMethod", "MomentumMethod", "MoCoV2", "SimCLR"]
