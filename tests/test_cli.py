"""Every config parses and prints; every config trains one fast_dev_run batch on CPU."""

from pathlib import Path

import pytest
import torch
import yaml

from hardcl_lightning.cli import build_cli, config_chain, expand_base_configs, main

ALL_CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if p.parent.name not in ("trainer", "data", "overlays"))
# dataset overlays: composed after a method config (tests below)
DATA_OVERLAYS = sorted((Path(__file__).parents[1] / "configs" / "data").glob("*.yaml"))
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
    data_class = next(d["data"]["class_path"] for _, d in reversed(config_chain(config)) if "class_path" in d.get("data", {}))
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
    # fast_dev_run is a smoke test: no checkpoint, even from a config's ModelCheckpoint(save_last=True), no image grid
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("*.png"))


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
    # the run's own directory (<save_dir>/<project>/<run id>, beside checkpoints/), not the logger's root
    assert (ckpt.parents[1] / "config.yaml").is_file() and not (tmp_path / "config.yaml").exists()
    for sub in ("validate", "test"):
        main([sub, "--config", tiny, *small, "--trainer.logger=false", f"--ckpt_path={ckpt}"])
    cli = build_cli(["predict", "--config", tiny, *small, "--trainer.logger=false", f"--ckpt_path={ckpt}",
                     "--trainer.callbacks=[]"])
    preds = cli.trainer.predict_loop.predictions
    assert sum(p["feats"].shape[0] for p in preds) == 32 and preds[0]["feats"].shape[1] == cli.model.feature_dim
    written = torch.load(ckpt.parents[1] / "predictions" / "embeddings.pt")  # the checkpoint's run directory
    assert torch.allclose(written["embeddings"], torch.cat([p["feats"] for p in preds]))


def test_fit_on_a_folder_of_unlabeled_images_then_predict_writes_its_embeddings(tmp_path, image_folder, monkeypatch):
    """Train on a nested folder without class sub-folders (kNN on labelled bank/val folders), then
    ``hardcl predict`` writes embeddings equal to the backbone's on those image files."""
    import numpy as np
    from PIL import Image

    from hardcl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
    from hardcl_lightning.methods import SimCLR

    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        d = tmp_path / "mine" / ("x" if i % 2 else "y/z")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    tiny = str(CONFIGS[0].parent / "tiny" / "simclr.yaml")
    data = ["--data=hardcl_lightning.data.UnlabeledFolderDataModule", f"--data.train_dir={tmp_path / 'mine'}",
            f"--data.val_dir={image_folder / 'val'}", f"--data.bank_dir={image_folder / 'train'}",
            "--data.batch_size=8", "--data.num_workers=0", "--data.image_size=32"]
    fit = build_cli(["fit", "--config", tiny, *data, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
                     "--trainer.logger=false"])
    knn = next(cb for cb in fit.trainer.callbacks if type(cb).__name__ == "OnlineKNN")
    assert [e for e, _ in knn.history] == [0, 1]  # kNN ran before training and after the epoch
    ckpt = next(tmp_path.rglob("*.ckpt"))
    build_cli(["predict", "--config", tiny, *data, "--data.predict_split=train", f"--ckpt_path={ckpt}",
               f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
    out = tmp_path / "predictions"
    record = torch.load(out / "embeddings.pt")
    paths = (out / "paths.txt").read_text().split()
    assert record["paths"] == paths and len(paths) == 24 and {Path(p).parent.name for p in paths} == {"x", "z"}
    assert (record["labels"] == -1).all() and record["split"] == "train"
    assert np.allclose(np.load(out / "embeddings.npy"), record["embeddings"].numpy())
    assert (out / "embeddings_pca.png").stat().st_size > 1000
    # independent: the checkpoint's backbone in eval mode on each file, read and transformed here
    model = SimCLR.load_from_checkpoint(ckpt, map_location="cpu").eval()
    tf = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD, 256 / 224)
    with torch.no_grad():
        expected = torch.cat([model.backbone(tf(Image.open(p).convert("RGB")).unsqueeze(0)) for p in paths])
    assert torch.allclose(record["embeddings"], expected, atol=1e-5)


def _help(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def _concrete(module, base):
    import inspect

    return sorted(n for n in module.__all__ if inspect.isclass(c := getattr(module, n)) and issubclass(c, base)
                  and not inspect.isabstract(c) and "Mixin" not in n and n not in ("BaseMethod", "MomentumMethod", "SSLDataModule"))


def test_fit_help_lists_every_method_and_datamodule(capsys):
    import lightning as L

    import hardcl_lightning.data as data
    import hardcl_lightning.methods as methods

    text = " ".join(_help(["fit", "--help"], capsys).split())  # the help wraps long lists
    names = _concrete(methods, L.LightningModule) + ["LinearEval"]
    assert len(names) >= 17
    for name in names:
        assert f"{name}," in text or f"{name})" in text, name
    for name in _concrete(data, data.SSLDataModule):
        assert f"hardcl_lightning.data.{name}" in text, name


@pytest.mark.parametrize(("group", "name"), [("model", m) for m in (
    "SimCLR", "MoCoV2", "MoCHi", "SimSiam", "BYOL", "DINO", "HVSSimCLR", "HVSMoCoV2", "HVSSimSiam", "HVSBYOL", "HVSDINO",
    "HardSampleCL", "HardSampleMoCoV2", "PositivePairCL", "PositivePairMoCoV2", "GANPretrain", "LinearEval")] + [
    ("data", d) for d in ("ShapesDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "STL10DataModule",
                          "ImageFolderDataModule", "UnlabeledFolderDataModule")])
def test_every_knob_has_help_text(group, name, capsys):
    """``--model.help NAME`` / ``--data.help NAME`` work with the bare class name, and no option is left
    without a description (LightningCLI takes them from the docstrings' Args sections)."""
    import re

    text = _help(["fit", f"--{group}.help", name], capsys)
    # "  --model.NAME [METAVAR]  [description...]" then indented continuation lines
    options = re.findall(rf"\n  (--{group}\.\S+)(?: \S+)?( {{2,}}[^\n]*)?\n((?: {{24}}[^\n]*\n)*)", text)
    assert len(options) >= 5, text[:2000]
    undocumented = [opt for opt, same_line, rest in options if " ".join((same_line + rest).split()).startswith("(type:")]
    assert not undocumented, f"{name}: no help text for {undocumented}"


KNOWN_NOISE = ("Unable to serialize", "JsonargparseWarning", "LeafSpec", "💡 Tip", "Total Flops")


def test_a_quiet_run_whose_saved_config_and_print_config_run_again(tmp_path, monkeypatch, capsys):
    """A quickstart-style run (a real process) prints none of the known noise and one progress line per
    epoch; the config.yaml it saves, and --print_config's output, are configs that run unchanged."""
    import os
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    quick = str(CONFIGS[0].parent / "quickstart.yaml")
    small = ["--data.init_args.num_train=64", "--data.init_args.num_val=32", "--data.init_args.batch_size=16",
             "--data.init_args.num_workers=0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-m", "hardcl_lightning", "fit", "--config", quick, *small, "--trainer.max_epochs=2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert [n for n in KNOWN_NOISE if n in out] == [], out
    progress = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [p.split(" | ")[0] for p in progress] == ["epoch 1/2", "epoch 2/2"], out
    assert all(" img/s | " in p and p.endswith("left") for p in progress) and progress[-1].endswith("~0:00 left")
    saved = tmp_path / "runs" / "quickstart" / "lightning_logs" / "version_0" / "config.yaml"
    assert "Unable to serialize" not in saved.read_text()
    main(["fit", "--config", str(saved), "--trainer.fast_dev_run=true"])
    printed = _help(["fit", "--config", str(CONFIGS[0].parent / "tiny" / "hvs_dino.yaml"), *small, "--print_config"], capsys)
    assert "Unable to serialize" not in printed
    (tmp_path / "printed.yaml").write_text(printed)
    main(["fit", "--config", str(tmp_path / "printed.yaml"), "--trainer.fast_dev_run=true"])
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "config.yaml").exists()  # files only in run directories


BASE_AND_HVS_CIFAR = [f"{m}_cifar10.yaml" for m in ("simclr", "mocov2", "simsiam", "byol", "dino")] + [
    f"hvs_{m}.yaml" for m in ("simclr", "mocov2", "simsiam", "byol", "dino")]


@pytest.mark.parametrize("overlay", ["cifar100", "stl10"])
@pytest.mark.parametrize("config", BASE_AND_HVS_CIFAR)
def test_dataset_overlays_turn_every_cifar10_recipe_into_a_cifar100_or_stl10_one(config, overlay, tmp_path, monkeypatch):
    """``--config <method cifar10> --config configs/data/<dataset>.yaml``: the dataset changes, the recipe stays."""

    monkeypatch.chdir(tmp_path)
    base_file = CONFIGS[0].parent / config
    cli = build_cli(["--config", str(base_file), "--config", str(CONFIGS[0].parent / "data" / f"{overlay}.yaml")], run=False)
    base = build_cli(["--config", str(base_file)], run=False)
    dm, model = cli.datamodule, cli.model
    assert type(dm).__name__ == {"cifar100": "CIFAR100DataModule", "stl10": "STL10DataModule"}[overlay]
    assert (dm.batch_size, dm.num_views, dm.num_local_crops) == (base.datamodule.batch_size, base.datamodule.num_views,
                                                                 base.datamodule.num_local_crops)
    assert type(model) is type(base.model) and model.base_lr == base.model.base_lr and model.optimizer_name == base.model.optimizer_name
    assert cli.trainer.logger.name == overlay and cli.trainer.logger.save_dir == base.trainer.logger.save_dir
    if overlay == "stl10":
        assert dm.use_unlabeled and dm.image_size == 96 == model.image_size
        assert dm.view_specs[0].blur_prob > 0 and model.hparams["cifar_stem"] is False
    else:
        assert dm.image_size == base.datamodule.image_size and model.hparams["cifar_stem"] == base.model.hparams["cifar_stem"]
    chain = config_chain(base_file)
    assert next(d["data"]["class_path"] for _, d in reversed(chain) if "data" in d).endswith("CIFAR10DataModule")


def test_unlabeled_folder_overlay_trains_an_imagefolder_recipe_on_a_plain_folder(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for i in range(8):
        d = tmp_path / "pics" / ("2025" if i % 2 else "2026/trip")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((torch.rand(48, 48, 3) * 255).to(torch.uint8).numpy()).save(d / f"p{i}.jpg")
    args = ["fit", "--config", str(CONFIGS[0].parent / "hvs_simclr_imagefolder.yaml"),
            "--config", str(CONFIGS[0].parent / "data" / "unlabeled_folder.yaml"), *CPU, "--trainer.fast_dev_run=true",
            f"--data.init_args.train_dir={tmp_path / 'pics'}", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--data.init_args.image_size=32"]
    cli = build_cli(args)
    assert type(cli.datamodule).__name__ == "UnlabeledFolderDataModule" and len(cli.datamodule.paths("train")) == 8
    assert cli.trainer.state.finished
    with pytest.raises(SystemExit):  # no train_dir: jsonargparse names the missing key
        build_cli(args[:-4])


@pytest.mark.parametrize("config", ["dino_cifar10.yaml", "hvs_dino.yaml"])
def test_multicrop_overlay_adds_local_crops_to_a_two_crop_dino_recipe(config, tmp_path, monkeypatch):
    """The CIFAR DINO recipes train on 2 crops (solo-learn); the overlay adds the paper's local crops and
    nothing else, and the result trains."""
    monkeypatch.chdir(tmp_path)
    base_file = CONFIGS[0].parent / config
    overlay = CONFIGS[0].parent / "overlays" / "dino_multicrop_32px.yaml"
    base = build_cli(["--config", str(base_file)], run=False)
    assert base.datamodule.num_local_crops == 0
    args = ["fit", "--config", str(base_file), "--config", str(overlay), *CPU, "--trainer.fast_dev_run=true",
            "--model.backbone=resnet_tiny", "--data=hardcl_lightning.data.ShapesDataModule", "--data.num_train=16",
            "--data.num_val=10", "--data.batch_size=4", "--data.num_workers=0"]
    cli = build_cli(args)
    dm = cli.datamodule
    assert (dm.num_local_crops, dm.view_specs[-1].size, dm.view_specs[-1].crop_scale) == (4, 16, (0.05, 0.4))
    assert dm.view_specs[0].crop_scale == (0.4, 1.0) and dm.num_views == base.datamodule.num_views
    assert cli.model.base_lr == base.model.base_lr and cli.model.ema_momentum == base.model.ema_momentum == 0.9995
    assert cli.trainer.state.finished


def test_base_config_chains_compose_in_order_and_bad_chains_are_named(tmp_path):
    """``base_config`` reads its files first (nested chains too), later values win; a missing base
    or a cycle is an error naming the file."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("seed_everything: 1\ntrainer: {max_epochs: 3}\n")
    (tmp_path / "sub" / "b.yaml").write_text("base_config: ../a.yaml\nseed_everything: 2\n")
    (tmp_path / "c.yaml").write_text("base_config: [sub/b.yaml]\ntrainer: {max_epochs: 5}\n")
    chain = config_chain(tmp_path / "c.yaml")
    assert [p.name for p, _ in chain] == ["a.yaml", "b.yaml", "c.yaml"]
    assert [d for _, d in chain] == [{"seed_everything": 1, "trainer": {"max_epochs": 3}}, {"seed_everything": 2},
                                     {"trainer": {"max_epochs": 5}}]
    args = expand_base_configs(["fit", f"--config={tmp_path / 'c.yaml'}", "--trainer.fast_dev_run=true"])
    assert args[0] == "fit" and args[-1] == "--trainer.fast_dev_run=true" and args.count("--config") == 3
    assert Path(args[2]).resolve() == tmp_path / "a.yaml"  # a plain base goes as its path; composing files as their YAML
    assert yaml.safe_load(args[4]) == {"seed_everything": 2} and yaml.safe_load(args[6]) == {"trainer": {"max_epochs": 5}}
    assert expand_base_configs(["--config", str(tmp_path / "a.yaml")]) == ["--config", str(tmp_path / "a.yaml")]
    (tmp_path / "d.yaml").write_text("base_config: nowhere.yaml\n")
    with pytest.raises(ValueError, match=r"d.yaml: base_config 'nowhere.yaml' does not exist"):
        config_chain(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("base_config: f.yaml\n")
    (tmp_path / "f.yaml").write_text("base_config: e.yaml\n")
    with pytest.raises(ValueError, match="base_config cycle"):
        config_chain(tmp_path / "e.yaml")


def test_a_composed_config_runs_from_the_command_line(tmp_path):
    """``python -m hardcl_lightning fit --config configs/tiny/hvs_simclr.yaml`` (sys.argv, not args):
    the base recipe plus selection trains, with no warning about args and argv."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "hardcl_lightning", "fit", "--config", str(CONFIGS[0].parent / "tiny" / "hvs_simclr.yaml"),
           "--data.init_args.num_train=32", "--data.init_args.num_val=16", "--data.init_args.batch_size=8",
           "--data.init_args.num_workers=0", "--trainer.fast_dev_run=true", "--print_config"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = yaml.safe_load(run.stdout)
    assert printed["model"]["class_path"].endswith("HVSSimCLR") and printed["model"]["init_args"]["optimizer"] == "adamw"
    assert printed["trainer"]["callbacks"][-1]["class_path"].endswith("HVSImageGrid") and len(printed["trainer"]["callbacks"]) == 4
    run = subprocess.run(cmd[:-1], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "not recommended to provide both args" not in run.stdout + run.stderr


def test_a_checkpoint_of_another_method_is_refused_naming_both(tmp_path, monkeypatch):
    """fit / predict with --ckpt_path of a MoCo v2 checkpoint under the SimCLR config: refused before
    anything trains, the error names both classes; a checkpoint that names no class is Lightning's."""
    monkeypatch.chdir(tmp_path)
    tiny = str(CONFIGS[0].parent / "tiny" / "simclr.yaml")
    small = ["--data.init_args.num_train=32", "--data.init_args.num_val=16", "--data.init_args.batch_size=16",
             "--data.init_args.num_workers=0", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    other = tmp_path / "moco.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "hardcl_lightning.methods.MoCoV2"}, "state_dict": {}}, other)
    for sub in ("fit", "predict"):
        with pytest.raises(ValueError, match=r"checkpoint of hardcl_lightning\.methods\.MoCoV2, but the config's model is "
                                             r"hardcl_lightning\.methods\.SimCLR"):
            main([sub, "--config", tiny, *small, f"--ckpt_path={other}"])
    assert not list(tmp_path.rglob("last.ckpt"))  # nothing trained
    from hardcl_lightning.checkpointing import check_checkpoint_method

    unnamed = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, unnamed)
    check_checkpoint_method(unnamed, "hardcl_lightning.methods.SimCLR")  # no class named: not ours to judge
    check_checkpoint_method(other, "my_package.MoCoV2")  # the same class name: a subclass's home may differ


def test_predict_writes_into_the_checkpoints_run_and_opens_no_run_of_its_own(tmp_path, monkeypatch):
    """Each predict used to add a version_N beside the training run (and write its config there)."""
    monkeypatch.chdir(tmp_path)
    tiny = str(CONFIGS[0].parent / "tiny" / "simclr.yaml")
    small = ["--data.init_args.num_train=32", "--data.init_args.num_val=16", "--data.init_args.batch_size=16",
             "--data.init_args.num_workers=0", "--trainer.max_epochs=1"]
    main(["fit", "--config", tiny, *small])
    runs = sorted(p.name for p in (tmp_path / "runs" / "tiny_simclr" / "lightning_logs").iterdir())
    run = tmp_path / "runs" / "tiny_simclr" / "lightning_logs" / "version_0"
    config_before = (run / "config.yaml").read_text()
    ckpt = next(run.rglob("*.ckpt"))
    for _ in range(2):
        main(["predict", "--config", tiny, *small, f"--ckpt_path={ckpt}"])
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny_simclr" / "lightning_logs").iterdir()) == runs == ["version_0"]
    assert (run / "predictions" / "embeddings.pt").is_file() and (run / "config.yaml").read_text() == config_before
