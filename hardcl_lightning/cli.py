"""The ``hardcl`` command: LightningCLI over every method and datamodule.

``hardcl fit --config configs/simclr_cifar10.yaml`` is the shape of every run. Values the
datamodule knows reach the model through argument links, so they are written once:
``data.batch_size -> model.batch_size`` (LR scaling, queue checks),
``data.image_size -> model.image_size`` (ViT position embeddings) and, the other way,
``model.num_views -> data.num_views`` (the method says how many views it consumes).

``hardcl fit`` continues an unfinished run by itself (``--resume auto``, the default): a
requeued or restarted job with the same config picks up its newest ``last.ckpt``.

Configs compose: a config file whose top-level ``base_config`` names other files (relative to
it) is read as those files, then itself (``--config base --config file``: later values win,
``class_path`` changes keep the init_args the new class accepts, ``callbacks+:`` appends). So
each recipe has one home and ``hvs_simclr.yaml`` is ``simclr_cifar10.yaml`` plus selection.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# imported so that ``--help`` lists them as known subclasses and ``--model.help HVSDINO`` finds them
import hardcl_lightning.evaluation  # noqa: F401
import hardcl_lightning.methods  # noqa: F401
from hardcl_lightning.callbacks import EmbeddingWriter
from hardcl_lightning.checkpointing import (
    SignalCheckpoint, check_checkpoint_method, continue_loggers, find_resumable_checkpoint, install_atomic_checkpoint_io,
)
from hardcl_lightning.data.datamodules import SSLDataModule
from hardcl_lightning.errors import HardCLArgumentParser, run_command
from hardcl_lightning.quiet import replace_model_summary, silence_known_noise
from hardcl_lightning.runs import SaveConfigToRunDirectory


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

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, writing checkpoints atomically. Installed here rather than as a plugin in
        ``trainer_defaults``: a plugin instance cannot be written to the run's ``config.yaml``, so that
        file would not run again."""
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)
        replace_model_summary(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Refuse a ``--ckpt_path`` of another method than the config's, naming both, before Lightning
        reads that checkpoint's hyperparameters (its model class among them) over the config."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_method(ckpt_path, self.config[sub].model.class_path)
        super()._parse_ckpt_path()

    def before_predict(self) -> None:
        """``hardcl predict`` writes its embeddings to files (``EmbeddingWriter``) unless a config has
        its own writer: into ``predictions/`` of the run that wrote ``--ckpt_path`` (the directory
        holding its ``checkpoints/``). Predicting logs nothing, so it opens no logger version of its
        own (each ``predict`` added a ``version_N`` beside the training run) and does not write its
        config over the training run's ``config.yaml``."""
        ckpt_path = self.config_init["predict"].get("ckpt_path")
        run_dir = None
        if ckpt_path and "://" not in str(ckpt_path):
            parent = Path(ckpt_path).resolve().parent
            run_dir = parent.parent if parent.name == "checkpoints" else parent
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, EmbeddingWriter)), None)
        if writer is None:
            writer = EmbeddingWriter()
            self.trainer.callbacks.append(writer)
        if writer.output_dir is None and run_dir is not None:
            writer.output_dir = str(run_dir / "predictions")
        self.trainer.logger = None
        self.trainer.callbacks = [cb for cb in self.trainer.callbacks if not isinstance(cb, SaveConfigToRunDirectory)]

    def before_fit(self) -> None:
        """Signal checkpoints for every fit; the automatic resume of an unfinished run."""
        if not any(isinstance(cb, SignalCheckpoint) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(SignalCheckpoint())
        if self.trainer.fast_dev_run:
            # Lightning says fast_dev_run suppresses checkpointing, yet ModelCheckpoint(save_last=True)
            # still writes last.ckpt when training ends (Lightning 2.6): a smoke test must not leave a
            # full-size checkpoint (ResNet-18 with its EMA copy: ~200 MB, ViT-S: ~550 MB) in the run directory
            for cb in self.trainer.checkpoint_callbacks:
                cb.save_last = None
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


BASE_CONFIG_KEY = "base_config"


def read_yaml(path: Path) -> Any:
    """A config file's YAML, with a syntax error that names the file (YAML's names "<unicode string>")."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None


def config_chain(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """A config file and everything its ``base_config`` names, base first: [(file, its YAML
    without ``base_config``)], in the order the CLI reads them."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ValueError(f"{path}: base_config cycle through {' -> '.join(str(p) for p in _seen)}")
    data = read_yaml(path)
    if not isinstance(data, dict) or BASE_CONFIG_KEY not in data:
        return [(path, data)]
    bases = data.pop(BASE_CONFIG_KEY)
    bases = [bases] if isinstance(bases, str) else list(bases)
    chain: list[tuple[Path, dict]] = []
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ValueError(f"{path}: base_config {base!r} does not exist (looked for {base_path})")
        chain += config_chain(base_path, (*_seen, path.resolve()))
    return chain + [(path, data)]


def expand_base_configs(args: list[str]) -> list[str]:
    """``--config F`` where F has a ``base_config`` -> one ``--config`` per file of its chain (the
    composing file itself as a YAML string without the key); other arguments unchanged."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        chain = config_chain(value) if Path(value).is_file() else [(Path(value), None)]
        if len(chain) == 1:
            out += ["--config", value]  # a plain file or a YAML string: jsonargparse reads it
            continue
        for j, (path, data) in enumerate(chain):
            plain = j < len(chain) - 1 and BASE_CONFIG_KEY not in read_yaml(path)
            out += ["--config", str(path) if plain else yaml.safe_dump(data, sort_keys=False)]
    return out


def build_cli(args: list[str] | None = None, run: bool = True) -> HardCLCLI:
    """The CLI over ``args`` (``sys.argv`` when None); ``run=False`` only instantiates."""
    if args is None:  # the command line: expanded in place (LightningCLI warns when given args and argv)
        sys.argv[1:] = expand_base_configs(sys.argv[1:])
    else:
        args = expand_base_configs(list(args))
    return HardCLCLI(
        L.LightningModule,  # every method is a BaseMethod; GAN pre-training is not
        SSLDataModule,
        parser_class=HardCLArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=SaveConfigToRunDirectory,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        run=run,
    )


def build_eval_parser():
    """``hardcl-eval knn`` (kNN sweep) and ``hardcl-eval export`` (backbone state dict)."""
    from jsonargparse import ActionConfigFile

    knn = HardCLArgumentParser(description="weighted-kNN accuracy of a checkpoint's backbone over a (k, temperature) grid")
    knn.add_argument("--config", action=ActionConfigFile, help="YAML with pretrained/data/k/temperature, e.g. configs/knn_sweep_cifar10.yaml")
    knn.add_argument("--pretrained", type=str, required=True, help="the .ckpt of a `hardcl fit` pre-training run")
    knn.add_subclass_arguments(SSLDataModule, "data", required=True, help="the labelled dataset: bank = train, queries = validation")
    knn.add_argument("--k", type=list[int], default=[10, 20, 50, 100, 200])
    knn.add_argument("--temperature", type=list[float], default=[0.02, 0.05, 0.07, 0.1, 0.2, 0.5])
    knn.add_argument("--device", type=str, default="cpu", help="cpu, cuda, cuda:1, ...")
    knn.add_argument("--output", type=str | None, default=None, help="also write the table as JSON here")
    export = HardCLArgumentParser(description="the backbone as a plain torchvision-style state dict (+ .json with its architecture)")
    export.add_argument("--pretrained", type=str, required=True)
    export.add_argument("--output", type=str, required=True, help="e.g. backbone.pth")
    parser = HardCLArgumentParser(prog="hardcl-eval", description="offline evaluation of pre-trained checkpoints "
                            "(linear evaluation: hardcl fit --config configs/linear_eval_cifar10.yaml --model.pretrained X.ckpt)")
    sub = parser.add_subcommands()
    sub.add_subcommand("knn", knn)
    sub.add_subcommand("export", export)
    return parser


def eval_main(args: list[str] | None = None) -> None:
    """Entry point of ``hardcl-eval``."""
    import json

    from hardcl_lightning.evaluation import export_backbone, knn_sweep_checkpoint

    silence_known_noise()
    parser = build_eval_parser()
    cfg = parser.parse_args(args)
    if cfg.subcommand == "export":
        meta = export_backbone(cfg.export.pretrained, cfg.export.output)
        print(f"wrote {cfg.export.output} ({meta['arch']}); it loads into {meta['loads_into']}")
        return
    c = cfg.knn
    datamodule = parser.instantiate_classes(cfg).knn.data
    rows = knn_sweep_checkpoint(c.pretrained, datamodule, c.k, c.temperature, c.device)
    print(f"kNN sweep of {c.pretrained} ({type(datamodule).__name__}):")
    print("| k | temperature | top-1 (%) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['temperature']} | {100 * r['acc']:.2f} |")
    best = max(rows, key=lambda r: r["acc"])
    print(f"best: k={best['k']} T={best['temperature']} -> {100 * best['acc']:.2f}%")
    if c.output:
        Path(c.output).write_text(json.dumps(rows, indent=2))


def main(args: list[str] | None = None) -> None:
    """Entry point of ``hardcl`` and ``python -m hardcl_lightning`` (returns nothing: a console
    script's return value becomes its exit status). A fit stopped by a signal, its checkpoint
    written, exits with 128 + the signal's number, as a process killed by it would: the job did not
    finish, and a scheduler or a shell loop must not take it for done."""
    silence_known_noise()
    cli = build_cli(args)
    stopped = next((cb.received for cb in getattr(cli.trainer, "callbacks", []) if isinstance(cb, SignalCheckpoint)
                    and cb.saved_path is not None), None)
    if stopped is not None:
        sys.exit(128 + int(stopped))


def console_main() -> None:
    """The ``hardcl`` command: ``main`` with a user's error (bad value, missing data, wrong
    checkpoint, full disk) printed as one line and exit status 1 (``hardcl_lightning.errors``)."""
    run_command("hardcl", main)


def eval_console_main() -> None:
    """The ``hardcl-eval`` command, as ``console_main``."""
    run_command("hardcl-eval", eval_main)


if __name__ == "__main__":  # pragma: no cover
    console_main()
