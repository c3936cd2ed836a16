"""The ``hardcl`` command: LightningCLI over every method and datamodule.

``hardcl fit --config configs/simclr_cifar10.yaml`` is the shape of every run. Values the
datamodule knows reach the model through argument links, so they are written once:
``data.batch_size -> model.batch_size`` (LR scaling, queue checks),
``data.image_size -> model.image_size`` (ViT position embeddings) and, the other way,
``model.num_views -> data.num_views`` (the method says how many views it consumes).

``hardcl fit`` continues an unfinished run by itself (``--resume auto``, the default): a
requeued or restarted job with the same config picks up its newest ``last.ckpt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from hardcl_lightning.checkpointing import AtomicCheckpointIO, SignalCheckpoint, continue_loggers, find_resumable_checkpoint
from hardcl_lightning.data.datamodules import SSLDataModule


class HardCLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.batch_size", "model.init_args.batch_size")
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("model.init_args.num_views", "data.init_args.num_views")
        parser.add_argument(
            "--resume", choices=["auto", "never"], default="auto",
            help="fit only. auto: without --ckpt_path, continue the newest unfinished run with the same model "
                 "hyperparameters from its last.ckpt under the run directory (requeued jobs); never: start fresh",
        )

    def before_fit(self) -> None:
        """Signal checkpoints for every fit; the automatic resume of an unfinished run."""
        if not any(isinstance(cb, SignalCheckpoint) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(SignalCheckpoint())
        cfg = self.config_init["fit"]
        if cfg.get("ckpt_path") is not None or cfg.get("resume", "auto") == "never":
            return
        root = Path(self.trainer.default_root_dir).resolve()
        # never crawl a whole working directory: Lightning's default root is the cwd
        roots = {str(root)} if root != Path.cwd().resolve() else {str(root / "checkpoints"), str(root / "lightning_logs")}
        for logger in self.trainer.loggers:
            for attr in ("root_dir", "save_dir"):
                value = getattr(logger, attr, None)
                if isinstance(value, str):
                    roots.add(value)
        cb = self.trainer.checkpoint_callback
        if cb is not None and cb.dirpath:
            roots.add(cb.dirpath)
        found = find_resumable_checkpoint(sorted(roots), dict(self.model.hparams), self.trainer.max_epochs, self.trainer.max_steps)
        if found is None:
            return
        path, ckpt = found
        continue_loggers(self.trainer.loggers, path, ckpt)
        cfg["ckpt_path"] = str(path)
        if self.trainer.is_global_zero:
            print(f"[hardcl] resuming the unfinished run in {path} (global step {ckpt.get('global_step')}); "
                  "--resume never starts a fresh one", flush=True)


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
