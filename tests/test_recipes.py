"""The recipes: docs/methods.md's table says what each base config trains with, and each HVS config
is its base recipe plus the selection knobs. Both are read from the configs as the CLI builds them."""

from pathlib import Path

import pytest

from hardcl_lightning.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
HVS_KNOBS = {"num_views", "pair_mode", "limit_comparisons", "selection_resolution", "select_every", "selection_rule",
             "reuse_targets", "scoring_updates_bn", "num_local_crops_trained", "hardness_warmup_epochs",
             "hardness_ramp_epochs", "hardness_ramp", "random_pair_prob", "selection_temperature",
             "selection_temperature_end", "temperature_schedule", "iou_threshold", "iou_threshold_end",
             "iou_threshold_schedule", "anneal_epochs"}


def recipe_table() -> dict[str, dict[str, str]]:
    section = (REPO / "docs" / "methods.md").read_text().split("## The recipes and their references", 1)[1]
    lines = section.split("\n## ", 1)[0].splitlines()
    rows = [line for line in lines if line.startswith("| `")]
    header = [h.strip() for h in next(line for line in lines if line.startswith("| config")).strip("|").split("|")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = dict(zip(header, cells))
    return table


def build(config: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return build_cli(["--config", str(CONFIGS / f"{config}.yaml")], run=False)


def described(cli) -> dict[str, str]:
    """The table's columns, written from the built model and datamodule."""
    m, dm = cli.model, cli.datamodule
    num = lambda x: f"{x:g}"  # noqa: E731
    lo, hi = dm.view_specs[0].crop_scale
    return {
        "optimizer": m.optimizer_name, "lr": num(m.base_lr), "weight decay": num(m.weight_decay),
        "warm-up epochs": num(m.warmup_epochs),
        "EMA": "-" if not hasattr(m, "ema_momentum") else f"{num(m.ema_momentum)} -> "
        + (f"{m.ema_momentum_end:.1f}" if m.ema_momentum_end == 1 else num(m.ema_momentum_end)),
        "crop scale": f"{num(lo)}-{num(hi)}", "blur": "/".join(f"{s.blur_prob:.1f}" for s in dm.view_specs[:2]),
        "forward": m.view_forward, "local crops": str(dm.num_local_crops),
    }


TABLE = recipe_table()


def normalise(cell: str) -> str:
    """Table spelling -> the spelling ``described`` writes (1e-4 and 0.0001 are one number)."""
    try:
        return f"{float(cell):g}"
    except ValueError:
        return cell


@pytest.mark.parametrize("config", sorted(TABLE))
def test_the_recipe_table_says_what_each_config_trains_with(config, tmp_path, monkeypatch):
    row = TABLE[config]
    got = described(build(config, tmp_path, monkeypatch))
    for column, value in got.items():
        assert normalise(row[column]) == normalise(value), f"{config}: docs say {column} {row[column]!r}, the config gives {value!r}"


def test_every_base_config_is_in_the_table():
    bases = {p.stem for p in CONFIGS.glob("*.yaml") if p.stem.endswith(("_cifar10", "_imagefolder"))
             and not p.stem.startswith(("hvs_", "gan_", "hard_sample", "hardgen", "positive_pair", "linear_eval", "knn_"))}
    assert bases == set(TABLE)


HVS_PAIRS = [(f"hvs_{m}", f"{m}_cifar10") for m in ("simclr", "mocov2", "simsiam", "simsiam_hvp", "byol", "dino")] + [
    (f"hvs_{m}_imagefolder", f"{m}_imagefolder") for m in ("simclr", "mocov2", "simsiam", "byol")] + [
    ("hvs_dino_imagefolder", "dino_vit_imagefolder")]  # HVS-DINO on ImageNet-100 is the ViT-S/16 recipe


def flat(cli) -> dict:
    return {k: v for k, v in vars(cli.config.clone().as_flat()).items() if k != "config"}


@pytest.mark.parametrize("hvs,base", HVS_PAIRS, ids=[h for h, _ in HVS_PAIRS])
def test_each_hvs_config_is_its_base_recipe_plus_selection(hvs, base, tmp_path, monkeypatch):
    """Every option of the HVS config equals the base config's, except the selection knobs, the model
    class, the candidate count the data makes, the run directory and the HVS image grid callback."""
    h, b = build(hvs, tmp_path, monkeypatch), build(base, tmp_path, monkeypatch)
    fh, fb = flat(h), flat(b)
    skip = {"model.class_path", "data.init_args.num_views", "trainer.logger.init_args.save_dir", "trainer.callbacks"}
    skip |= {f"model.init_args.{k}" for k in HVS_KNOBS}
    differ = {k: (fb.get(k), fh.get(k)) for k in set(fh) | set(fb) if k not in skip and fb.get(k) != fh.get(k)}
    assert not differ, f"{hvs} differs from {base}: {differ}"
    assert type(h.model).__name__ == "HVS" + type(b.model).__name__
    assert dict(h.model.hparams, **{k: None for k in HVS_KNOBS}) == dict(b.model.hparams, **{k: None for k in HVS_KNOBS}) | {
        "_class_path": h.model.hparams["_class_path"]}
    grid = [c for c in h.config.trainer.callbacks if c.class_path.endswith("HVSImageGrid")]
    rest = [c for c in h.config.trainer.callbacks if not c.class_path.endswith("HVSImageGrid")]
    assert len(grid) == 1 and rest == list(b.config.trainer.callbacks)


def hvs_table() -> dict[str, dict[str, str]]:
    section = (REPO / "docs" / "methods.md").read_text().split("What each HVS config selects", 1)[1]
    lines = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return {cells[0].strip("`"): dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_the_hvs_table_says_what_each_hvs_config_selects(tmp_path, monkeypatch):
    table = hvs_table()
    assert set(table) == {h for h, _ in HVS_PAIRS}
    for hvs, base in HVS_PAIRS:
        row, m = table[hvs], build(hvs, tmp_path, monkeypatch).model
        assert row["base config"] == f"`{base}`"
        got = {"rule": m.selection_rule, "warm-up epochs": f"{m.hardness_warmup_epochs:g}",
               "ramp epochs": f"{m.hardness_ramp_epochs:g}", "random pair": f"{m.random_pair_prob:g}",
               "temperature": f"{m.selection_temperature:g}",
               "targets": "-" if not m.target_keys else ("reused" if m.reuse_targets else "recomputed")}
        assert {k: row[k] for k in got} == got, hvs
