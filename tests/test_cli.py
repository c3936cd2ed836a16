"""Every config parses and prints; every config trains one fast_dev_run batch on CPU."""

from pathlib import Path

import pytest
import yaml

from hardcl_lightning.cli import build_cli, main

ALL_CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if p.parent.name != "trainer")
# offline evaluation of a pre-trained checkpoint (tests/test_evaluation.py runs them)
EVAL_CONFIGS = [p for p in ALL_CONFIGS if p.stem.startswith(("linear_eval", "knn_sweep"))]
CONFIGS = [p for p in ALL_CONFIGS if p not in EVAL_CONFIGS]  # pre-training runs
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "simclr_cifar10.yaml", "mocov2_cifar10.yaml", "simsiam_cifar10.yaml", "byol_cifar10.yaml",
            "dino_cifar10.yaml", "dino_vit_imagefolder.yaml"} <= names
    base = {"simclr", "mocov2", "simsiam", "byol", "dino"}
    generative = {"gan_pretrain", "hard_sample_gen", "positive_pair", "hardgen_full"}
    assert {p.stem for p in CONFIGS if p.parent.name == "tiny"} == base | {f"hvs_{m}" for m in base} | {"mochi"} | generative
    datasets = ("cifar10", "cifar100", "imagenet100")
    assert {"gan_pretrain_cifar10.yaml", "hardgen_full_cifar10.yaml"} | {f"hard_sample_gen_{d}.yaml" for d in datasets} <= names
    assert {f"positive_pair_{d}.yaml" for d in datasets} <= names
    assert {"mochi_cifar10.yaml", "mochi_imagenet100.yaml"} <= names
    assert {f"hvs_{m}.yaml" for m in base} | {f"hvs_{m}_imagefolder.yaml" for m in base} <= names


README_CPU_RUNS = [l for l in (Path(__file__).parents[1] / "README.md").read_text().splitlines()
                   if l.startswith("hardcl fit --config configs/") and "--trainer.fast_dev_run=true" in l]


def test_readme_documents_cpu_runs_of_hvs_dino_and_mochi():
    assert {l.split()[3] for l in README_CPU_RUNS} >= {"configs/hvs_dino.yaml", "configs/mochi_cifar10.yaml"}


@pytest.mark.parametrize("line", README_CPU_RUNS, ids=lambda l: l.split()[3])
def test_readme_cpu_override_runs(line, tmp_path, monkeypatch):
    """The README's CPU-sized fast_dev_run commands, on the embedded dataset."""
    monkeypatch.chdir(tmp_path)
    args = line.split()[1:]  # drop "hardcl"
    main([a if not a.startswith("configs/") else str(Path(__file__).parents[1] / a) for a in args])


@pytest.mark.parametrize("method", ["SimCLR", "MoCoV2", "SimSiam", "BYOL", "DINO"])
def test_quickstart_switches_method_with_one_line(method, tmp_path):
    """Replacing only the model.class_path line of the quickstart gives a valid config for every method."""
    text = (CONFIGS[0].parent / "quickstart.yaml").read_text()
    assert text.count("class_path: hardcl_lightning.methods.SimCLR") == 1
    cfg = tmp_path / "q.yaml"
    cfg.write_text(text.replace("hardcl_lightning.methods.SimCLR", f"hardcl_lightning.methods.{method}"))
    cli = build_cli(["--config", str(cfg), "--trainer.logger=false"], run=False)
    assert type(cli.model).__name__ == method


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(config), "--print_config"])
    assert e.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("hardcl_lightning.methods.")
    assert "batch_size" not in printed["model"]["init_args"]  # a link target, written once (on data)


def test_links_carry_values_between_data_and_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        ["--config", str(CONFIGS[0].parent / "quickstart.yaml"), "--data.init_args.batch_size=32",
         "--data.init_args.image_size=24", "--model.init_args.num_views=3", "--trainer.logger=false"],
        run=False,
    )
    assert cli.model.batch_size == 32 == cli.datamodule.batch_size
    assert cli.datamodule.image_size == 24 and cli.datamodule.view_specs[0].size == 24
    assert cli.model.num_views == 3 == cli.datamodule.num_views == len(cli.datamodule.view_specs)


def _imagefolder_args(root: Path, config: Path) -> list[str]:
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    args = [] if data_class.endswith("ImageFolderDataModule") else ["--data=hardcl_lightning.data.ImageFolderDataModule"]
    return args + [
        f"--data.train_dir={root / 'train'}",
        f"--data.val_dir={root / 'val'}",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--data.image_size=32",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fast_dev_run_on_an_image_folder(config, image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(config), *CPU, "--trainer.fast_dev_run=true", *_imagefolder_args(image_folder, config)])
    # fast_dev_run is a smoke test: no checkpoint, even from a config's ModelCheckpoint(save_last=True)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_config_typo_names_the_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONFIGS[0]), "--model.init_args.temprature=0.1"])
    assert e.value.code != 0
    assert "temprature" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["SimCLR", "MoCoV2", "SimSiam", "BYOL", "DINO", "HVSSimCLR", "HVSDINO", "HardSampleCL",
                                  "HardSampleMoCoV2", "PositivePairCL"])
def test_cli_defaults_are_the_python_defaults(name, tmp_path, monkeypatch):
    """A method's own defaults (optimizer, lr, EMA, views) must be visible to LightningCLI, not hidden in code."""
    import hardcl_lightning.methods as methods

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"model:\n  class_path: hardcl_lightning.methods.{name}\n  init_args: {{backbone: resnet_tiny}}\n"
                   "data:\n  class_path: hardcl_lightning.data.ShapesDataModule\n  init_args: {batch_size: 256}\n")
    from_cli = build_cli(["--config", str(cfg), "--trainer.logger=false"], run=False).model
    direct = getattr(methods, name)(backbone="resnet_tiny")
    for attr in ("optimizer_name", "base_lr", "weight_decay", "warmup_epochs", "num_views", "ema_momentum", "ema_momentum_end"):
        assert getattr(from_cli, attr, None) == getattr(direct, attr, None), attr


def test_validate_test_predict_and_wandb_offline(tmp_path, monkeypatch):
    """fit with a WandbLogger (offline), then validate / test / predict from the saved checkpoint."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tiny = str(CONFIGS[0].parent / "tiny" / "simclr.yaml")
    small = ["--data.init_args.num_train=64", "--data.init_args.num_val=32", "--data.init_args.batch_size=16",
             "--data.init_args.num_workers=0", f"--trainer.default_root_dir={tmp_path}"]
    main(["fit", "--config", tiny, *small, "--trainer.max_epochs=1",
          "--trainer.logger=lightning.pytorch.loggers.WandbLogger", f"--trainer.logger.init_args.save_dir={tmp_path}",
          "--trainer.logger.init_args.project=hardcl-test"])
    assert list(tmp_path.rglob("*.wandb")), "no offline wandb run was written"
    ckpt = next(tmp_path.rglob("*.ckpt"))
    assert (ckpt.parents[2] / "config.yaml").is_file() or list(tmp_path.rglob("config.yaml"))
    for sub in ("validate", "test"):
        main([sub, "--config", tiny, *small, "--trainer.logger=false", f"--ckpt_path={ckpt}"])
    cli = build_cli(["predict", "--config", tiny, *small, "--trainer.logger=false", f"--ckpt_path={ckpt}",
                     "--trainer.callbacks=[]"])
    preds = cli.trainer.predict_loop.predictions
    assert sum(p.shape[0] for p in preds) == 32 and preds[0].shape[1] == cli.model.feature_dim
