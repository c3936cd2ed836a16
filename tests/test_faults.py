"""Faults: a real training process killed (SIGKILL) or signalled (SIGUSR1, SIGTERM) mid-run and
started again with the same command resumes by itself and loses at most the steps since its
last checkpoint (none after a signal). The signals go to the whole process group, DataLoader
workers included, as schedulers, ``timeout`` and SLURM send them; under a (simulated) SLURM
job SIGUSR1 also requeues it. Also: --resume never, finished runs, logger continuity."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CKPT_EVERY = 4
STEPS_PER_EPOCH, EPOCHS = 8, 3


class StepMarker(L.Callback):
    """Appends the global step after every training batch, and the epoch to ``<path>.epochs`` when
    one ends (and can slow both down, so that a signal lands there)."""

    def __init__(self, path: str, sleep: float = 0.0) -> None:
        self.path, self.sleep = path, sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:  # one line per step under DDP too
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step}\n")
        time.sleep(self.sleep)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            with open(self.path + ".epochs", "a") as f:
                f.write(f"{trainer.current_epoch}\n")
        time.sleep(3 * self.sleep)


SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "hardcl-test", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def command(tmp_path: Path, sleep: float, extra=(), num_workers: int = 0, slurm: bool = False) -> list[str]:
    override = tmp_path / "override.yaml"
    plugins = """
  plugins:
    - class_path: lightning.pytorch.plugins.environments.SLURMEnvironment
      init_args: {auto_requeue: true, requeue_signal: SIGUSR1}""" if slurm else ""
    override.write_text(f"""trainer:
  max_epochs: {EPOCHS}{plugins}
  log_every_n_steps: 1
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: {CKPT_EVERY}, save_last: true}}
    - class_path: test_faults.StepMarker
      init_args: {{path: {tmp_path / 'steps.txt'}, sleep: {sleep}}}
data:
  init_args: {{num_train: {STEPS_PER_EPOCH * 16}, num_val: 32, batch_size: 16, num_workers: {num_workers}}}
""")
    return [sys.executable, "-m", "hardcl_lightning", "fit", "--config", str(REPO / "configs" / "tiny" / "simclr.yaml"),
            "--config", str(override), *extra]


def env(tmp_path: Path | None = None, slurm: bool = False):
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    if slurm:  # a SLURM job of one task, with an scontrol that records what it was asked
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.txt'}\n")
        scontrol.chmod(0o755)
        e.update(SLURM_JOB, PATH=f"{bin_dir}{os.pathsep}{e['PATH']}")
    return e


def steps(tmp_path: Path) -> list[int]:
    f = tmp_path / "steps.txt"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def csv_rows(tmp_path: Path) -> list[dict]:
    import csv

    files = list(tmp_path.rglob("metrics.csv"))
    assert len(files) <= 1, files
    if not files:
        return []
    with open(files[0], newline="") as f:  # the columns may grow after a resume: compare the filled values
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def last_ckpt(tmp_path: Path) -> Path:
    found = list(tmp_path.rglob("last*.ckpt"))  # one "last": no last-v1.ckpt beside it
    assert len(found) == 1, found
    return found[0]


def epochs_ended(tmp_path: Path) -> int:
    f = tmp_path / "steps.txt.epochs"
    return len(f.read_text().split()) if f.exists() else 0


def interrupt(tmp_path: Path, sig: int, after_step: int, num_workers: int = 0, slurm: bool = False,
              at_epoch_end: bool = False, extra=()) -> tuple[int, str]:
    """Start a run in its own process group; at ``after_step`` (or, ``at_epoch_end``, once the
    first epoch's last batch is done and its end hooks run) send ``sig`` to the whole group."""
    proc = subprocess.Popen(command(tmp_path, sleep=0.3, extra=extra, num_workers=num_workers, slurm=slurm), cwd=tmp_path,
                            env=env(tmp_path, slurm), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 240

    def waiting() -> bool:
        return not epochs_ended(tmp_path) if at_epoch_end else (not steps(tmp_path) or steps(tmp_path)[-1] < after_step)

    while waiting() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, sig)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hang: end the whole group, then fail with what it printed
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
        pytest.fail(f"no exit within 120 s of {signal.Signals(sig).name}:\n{out[-3000:]}")
    return proc.returncode, out


def restart(tmp_path: Path, num_workers: int = 0, extra=()) -> str:
    done = subprocess.run(command(tmp_path, sleep=0.0, extra=extra, num_workers=num_workers), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize(("sig", "num_workers", "slurm", "at_epoch_end", "after_step"), [
    (signal.SIGKILL, 0, False, False, CKPT_EVERY + 2),
    (signal.SIGUSR1, 2, False, False, CKPT_EVERY + 2),
    (signal.SIGTERM, 2, False, False, CKPT_EVERY + 2),
    (signal.SIGINT, 2, False, False, 2),  # before ModelCheckpoint's first save: its last.ckpt is ours
    (signal.SIGTERM, 0, False, True, None),
    (signal.SIGUSR1, 2, True, False, CKPT_EVERY + 2),
], ids=["SIGKILL", "SIGUSR1-group-2-workers", "SIGTERM-group-2-workers", "Ctrl-C-group-2-workers-before-any-checkpoint",
        "SIGTERM-after-an-epochs-last-batch", "SLURM-requeue-SIGUSR1-group-2-workers"])
def test_killed_run_restarts_and_loses_at_most_the_steps_since_its_checkpoint(sig, num_workers, slurm, at_epoch_end, after_step,
                                                                              tmp_path):
    rc, out = interrupt(tmp_path, sig, after_step=after_step, num_workers=num_workers, slurm=slurm,
                        at_epoch_end=at_epoch_end)
    before = steps(tmp_path)
    done_before = before[-1]
    saved = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)["global_step"]
    lost = done_before - saved
    print(f"\n[fault] {signal.Signals(sig).name}: exit {rc}, steps done {done_before}, checkpoint at {saved}, steps lost {lost}")
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL and 0 <= lost < CKPT_EVERY + 1
    else:  # a signal: checkpoint at the next batch boundary, nothing lost, the workers did not die first,
        # and the exit status says the run was stopped by that signal (a scheduler must not see "done")
        assert "checkpoint written" in out, out[-3000:]
        assert rc == 128 + sig, (rc, out[-3000:])
        if at_epoch_end:  # Lightning's own handler ended such a run with exit 0 and no checkpoint
            assert saved == STEPS_PER_EPOCH
        assert "DataLoader worker" not in out, out[-3000:]
        assert lost == 0
    if slurm:  # the job was requeued once, after the checkpoint, by SignalCheckpoint (no mid-step hpc_ckpt)
        assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", SLURM_JOB["SLURM_JOB_ID"]]
        assert out.index("checkpoint written") < out.index("requeued SLURM job")
        assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))
    metrics_before = csv_rows(tmp_path)
    log = restart(tmp_path, num_workers)
    assert "resuming the unfinished run" in log
    metrics_after = csv_rows(tmp_path)  # Lightning's CSV logger deleted the rows logged before a resume
    kept = [row for row in metrics_before if int(row["step"]) < saved]  # logged before the checkpoint
    assert kept and all(row in metrics_after for row in kept), (metrics_before, metrics_after)
    assert sorted({int(row["step"]) for row in metrics_after if "train/loss" in row}) == list(range(STEPS_PER_EPOCH * EPOCHS))
    if sig != signal.SIGKILL:  # a signal stop flushes the logs (a SIGKILL loses what was not yet written)
        assert len(metrics_before) >= saved
    after = steps(tmp_path)[len(before):]
    assert after[0] == saved + 1  # the first step after the restart continues from the checkpoint
    assert after[-1] == STEPS_PER_EPOCH * EPOCHS
    assert torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert len(list((tmp_path / "runs").rglob("version_*"))) == 1  # logs continue in the same run directory


DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


@pytest.mark.parametrize(("sig", "at_epoch_end"), [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGUSR1, False)],
                         ids=["SIGTERM-mid-epoch", "SIGTERM-after-an-epochs-last-batch", "SIGUSR1-mid-epoch"])
def test_a_two_process_ddp_run_signalled_as_a_group_checkpoints_exits_and_resumes(sig, at_epoch_end, tmp_path):
    """Both ranks get the signal (a scheduler signals the job's process group). Lightning's own
    SIGTERM handler broadcast from inside the handler and re-signalled rank 1: hangs, gloo aborts,
    exits 0 without a checkpoint (6 of 11 tries). Here: a checkpoint of the last finished step, exit
    128 + signal, no hang (bounded), and the restarted DDP run finishes the schedule."""
    steps_per_epoch = STEPS_PER_EPOCH // 2  # each rank takes half of every epoch
    rc, out = interrupt(tmp_path, sig, after_step=steps_per_epoch + 1, at_epoch_end=at_epoch_end, extra=DDP)
    saved = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=True)["global_step"]
    print(f"\n[fault] DDP {signal.Signals(sig).name}: exit {rc}, steps done {steps(tmp_path)[-1]}, checkpoint at {saved}")
    assert rc == 128 + sig and "checkpoint written" in out, (rc, out[-3000:])
    assert saved == steps(tmp_path)[-1] and (saved == steps_per_epoch if at_epoch_end else saved > steps_per_epoch)
    before = len(steps(tmp_path))
    log = restart(tmp_path, extra=DDP)
    assert "resuming the unfinished run" in log
    after = steps(tmp_path)[before:]
    assert after[0] == saved + 1 and after[-1] == steps_per_epoch * EPOCHS


def test_finished_runs_and_resume_never_start_fresh(tmp_path):
    restart(tmp_path)  # a complete run
    first = steps(tmp_path)
    log = restart(tmp_path)  # same command again: the run is finished, so a new one starts
    assert "resuming" not in log and steps(tmp_path)[len(first)] == 1
    (tmp_path / "steps.txt").unlink()
    rc, _ = interrupt(tmp_path, signal.SIGUSR1, after_step=2)
    done = subprocess.run(command(tmp_path, sleep=0.0, extra=["--resume=never"]), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "resuming" not in done.stdout + done.stderr
    assert steps(tmp_path)[-STEPS_PER_EPOCH * EPOCHS] == 1  # trained from step 1 again
