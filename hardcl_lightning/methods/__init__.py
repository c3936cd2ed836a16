"""Base methods and hard-sample methods, all on the ``embed`` / ``pair_loss`` contract."""

from hardcl_lightning.methods.base import BaseMethod, MomentumMethod
from hardcl_lightning.methods.byol import BYOL
from hardcl_lightning.methods.dino import DINO
from hardcl_lightning.methods.gan_training import GANPretrain
from hardcl_lightning.methods.generative import (
    HardSampleCL,
    HardSampleMixin,
    HardSampleMoCoV2,
    with_hard_samples,
)
from hardcl_lightning.methods.hvs import (
    HardViewSelectionMixin,
    HVSBYOL,
    HVSDINO,
    HVSMoCoV2,
    HVSSimCLR,
    HVSSimSiam,
    with_hvs,
)
from hardcl_lightning.methods.mochi import MoCHi
from hardcl_lightning.methods.mocov2 import MoCoV2
from hardcl_lightning.methods.positive_pairs import PositivePairCL, PositivePairMixin, PositivePairMoCoV2
from hardcl_lightning.methods.simclr import SimCLR
from hardcl_lightning.methods.simsiam import SimSiam

__all__ = [
    "BaseMethod",
    "BYOL",
    "DINO",
    "GANPretrain",
    "HardSampleCL",
    "HardSampleMixin",
    "HardSampleMoCoV2",
    "HardViewSelectionMixin",
    "HVSBYOL",
    "HVSDINO",
    "HVSMoCoV2",
    "HVSSimCLR",
    "HVSSimSiam",
    "MoCHi",
    "MomentumMethod",
    "MoCoV2",
    "PositivePairCL",
    "PositivePairMixin",
    "PositivePairMoCoV2",
    "SimCLR",
    "SimSiam",
    "with_hard_samples",
    "with_hvs",
]
