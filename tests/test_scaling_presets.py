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


def _fake_srun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (bin_dir / "srun").chmod(0o755)
    return bin_dir


def test_sbatch_script_finds_the_repo_from_the_submit_dir_when_run_from_the_spool(tmp_path):
    """sbatch runs a copy of the script from its spool directory: the repo comes from SLURM_SUBMIT_DIR."""
    import os
    import shutil

    spool = tmp_path / "spool" / "job4242"
    spool.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "slurm" / "pretrain.sbatch", spool / "slurm_script")
    env = {k: v for k, v in os.environ.items() if k not in ("HARDCL", "HARDCL_REPO")}
    env.update(PATH=f"{_fake_srun(tmp_path)}{os.pathsep}{env['PATH']}", SLURM_SUBMIT_DIR=str(REPO),
               SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="8")
    run = subprocess.run(["bash", str(spool / "slurm_script"), "configs/hvs_dino.yaml", "--trainer.max_epochs=5"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    args = run.stdout.split("\n")
    assert args[:3] == [str(REPO / ".venv" / "bin" / "hardcl"), "fit", "--config"]
    assert str(REPO / "configs" / "trainer" / "slurm.yaml") in args
    assert "--trainer.num_nodes=2" in args and "--trainer.devices=8" in args and "--trainer.max_epochs=5" in args

    env["SLURM_SUBMIT_DIR"] = str(tmp_path)  # submitted from elsewhere: a clear error, not a wrong path
    bad = subprocess.run(["bash", str(spool / "slurm_script"), "configs/hvs_dino.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a hardcl_lightning checkout" in bad.stderr and "HARDCL_REPO" in bad.stderr


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
