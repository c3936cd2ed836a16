"""The ``hardcl`` command: LightningCLI over every method and datamodule.

``hardcl fit --config configs/simclr_cifar10.yaml`` is the shape of every run. Values the
datamodule knows reach the model through argument links, so they are written once:
``data.batch_size -> model.batch_size`` (LR scaling, queue checks),
``data.image_size -> model.image_size`` (ViT position embeddings) and, the other way,
``model.num_views -> data.num_views`` (the method says how many views it consumes).
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from hardcl_lightning.checkpointing import AtomicCheckpointIO
from hardcl_lightning.data.datamodules import SSLDataModule


class HardCLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.batch_size", "model.init_args.batch_size")
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("model.init_args.num_views", "data.init_args.num_views")


def build_cli(args: list[str] | None = None, run: bool = True) -> HardCLCLI:
    """The CLI over ``args`` (``sys.argv`` when None); ``run=False`` only instantiates."""
    return HardCLCLI(
        L.LightningModule,  # every method is a BaseMethod; GAN pre-training is not
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # checkpoints are written atomically unless a config sets its own plugins (then list it there)
        trainer_defaults={"plugins": [AtomicCheckpointIO()]},
        args=args,
        auto_configure_optimizers=False,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``hardcl`` and ``python -m hardcl_lightning`` (returns nothing: a console
    script's return value becomes its exit status)."""
    build_cli(args)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
