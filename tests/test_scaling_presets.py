"""Trainer presets compose with method configs; the SLURM script parses; SLURM variables reach the trainer."""

import subprocess
from pathlib import Path

import pytest

from hardcl_lightning.cli import build_cli

REPO = Path(__file__).parents[1]
PRESETS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))


def test_presets_exist():
    assert {p.stem for p in PRESETS} == {"cpu", "gpu", "ddp", "slurm"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_composes_with_a_method_config(preset, capsys):
    with pytest.raises(SystemExit) as e:
        build_cli(["fit", "--config", str(REPO / "configs" / "hvs_dino.yaml"), "--config", str(preset), "--print_config"])
    assert e.value.code in (0, None)
    assert "hardcl_lightning.methods.HVSDINO" in capsys.readouterr().out


def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm" / "pretrain.sbatch")], check=True)


def test_simulated_slurm_environment_sets_ranks(monkeypatch, tmp_path):
    """With SLURM's variables (2 nodes x 2 tasks, this is global rank 3), Lightning takes rank and world size from them."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    env = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_JOB_NAME": "hardcl", "SLURM_JOB_ID": "1234", "SLURM_NODELIST": "node[1-2]"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert SLURMEnvironment.detect()
    senv = SLURMEnvironment()
    assert (senv.world_size(), senv.global_rank(), senv.local_rank(), senv.node_rank()) == (4, 3, 1, 1)
    assert senv.main_address == "node1"
