"""Stop signals at random points of 2-process DDP runs (gloo, CPU): every try must leave a readable
``last.ckpt`` at the last finished step, exit 128 + the signal, never hang, and resume to the end.

    python benchmarks/signal_faults.py                 # 20 tries: SIGTERM / SIGUSR1, mid-epoch or at an epoch's end
    python benchmarks/signal_faults.py --tries 4 --processes 1

Each try trains ``configs/tiny/simclr.yaml`` (3 epochs of 4 steps per rank, one checkpoint every 4
steps) in its own process group, sends the signal to the whole group (as schedulers, ``timeout``
and SLURM's ``--signal`` do) after a random step, or while the end-of-epoch hooks of a random
epoch run, then runs the same command again. A try fails when the run does not exit within
``--timeout`` s (a hang), exits with another status, leaves no loadable ``last.ckpt`` or one
behind the last finished step, or the restarted run does not resume from it and finish. One JSON
record per try in ``benchmarks/out/signal_faults/`` (git-ignored), a summary line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "signal_faults"
STEPS_PER_EPOCH, EPOCHS = 8, 3  # per epoch over the whole batch; each of P ranks takes 8 / P


class Marker(L.Callback):
    """Rank 0 appends each finished step to ``<path>`` and each ended epoch to ``<path>.epochs``;
    both sleep, so that a signal lands inside a step's or an epoch end's hooks."""

    def __init__(self, path: str, sleep: float = 0.3) -> None:
        self.path, self.sleep = path, sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step}\n")
        time.sleep(self.sleep)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            with open(self.path + ".epochs", "a") as f:
                f.write(f"{trainer.current_epoch}\n")
        time.sleep(3 * self.sleep)


def _lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def command(work: Path, processes: int, sleep: float) -> list[str]:
    override = work / "override.yaml"
    override.write_text(f"""trainer:
  max_epochs: {EPOCHS}
  accelerator: cpu
  devices: {processes}
  strategy: {"ddp" if processes > 1 else "auto"}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: 4, save_last: true}}
    - class_path: signal_faults.Marker
      init_args: {{path: {work / 'steps.txt'}, sleep: {sleep}}}
data:
  init_args: {{num_train: {STEPS_PER_EPOCH * 16}, num_val: 32, batch_size: 16, num_workers: 0}}
""")
    return [sys.executable, "-m", "hardcl_lightning", "fit", "--config", str(REPO / "configs" / "tiny" / "simclr.yaml"),
            "--config", str(override)]


def one_try(work: Path, sig: int, at_epoch_end: bool, processes: int, timeout: float, rng: random.Random) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    steps_per_epoch = STEPS_PER_EPOCH // processes
    total = steps_per_epoch * EPOCHS
    steps, epochs = work / "steps.txt", work / "steps.txt.epochs"
    target_epoch = rng.randrange(EPOCHS - 1)  # an epoch with one after it
    target_step = rng.randrange(1, total - 1)
    record = {"signal": signal.Signals(sig).name, "at": f"end of epoch {target_epoch}" if at_epoch_end else f"after step {target_step}",
              "processes": processes}
    proc = subprocess.Popen(command(work, processes, 0.3), cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (len(_lines(epochs)) > target_epoch) if at_epoch_end else (_lines(steps)[-1:] or [0])[0] >= target_step:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        return {**record, "ok": False, "why": f"the run ended (exit {proc.returncode}) before the signal point"}
    os.killpg(proc.pid, sig)
    start = time.time()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
        return {**record, "ok": False, "why": f"hang: no exit within {timeout:.0f} s", "tail": out[-1500:]}
    record.update(exit=proc.returncode, seconds_to_exit=round(time.time() - start, 1), steps_done=_lines(steps)[-1])
    found = list(work.rglob("last*.ckpt"))  # exactly one "last": a last-v1.ckpt beside it fails
    if proc.returncode != 128 + sig:
        return {**record, "ok": False, "why": f"exit {proc.returncode}, expected {128 + sig}", "tail": out[-1500:]}
    if len(found) != 1:
        return {**record, "ok": False, "why": f"{len(found)} last.ckpt files", "tail": out[-1500:]}
    saved = int(torch.load(found[0], map_location="cpu", weights_only=True)["global_step"])
    record["checkpoint_step"] = saved
    if saved != record["steps_done"]:
        return {**record, "ok": False, "why": f"checkpoint at step {saved}, {record['steps_done']} steps done"}
    n_before = len(_lines(steps))
    done = subprocess.run(command(work, processes, 0.0), cwd=work, env=env, capture_output=True, text=True, timeout=600)
    after = _lines(steps)[n_before:]
    resumed = done.returncode == 0 and "resuming the unfinished run" in done.stdout + done.stderr and after[:1] == [saved + 1] \
        and after[-1:] == [total]
    record["resumed"] = resumed
    if not resumed:
        return {**record, "ok": False, "why": f"restart: exit {done.returncode}, steps {after[:2]}..{after[-1:]}",
                "tail": (done.stdout + done.stderr)[-1500:]}
    return {**record, "ok": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2, help="DDP processes (gloo); 1: a single process")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a signalled run may take to exit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    kinds = [(sig, end) for sig in (signal.SIGTERM, signal.SIGUSR1) for end in (False, True)]
    results = []
    for i in range(args.tries):
        sig, at_end = kinds[i % len(kinds)]
        work = Path(tempfile.mkdtemp(prefix="hardcl-signal-"))
        try:
            r = one_try(work, sig, at_end, args.processes, args.timeout, rng)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        r.update(try_=i, date=time.strftime("%Y-%m-%d"), machine=f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
        (OUT / f"try{i:02d}_p{args.processes}.json").write_text(json.dumps(r, indent=1))
        results.append(r)
        print(f"try {i + 1}/{args.tries}: {r['signal']} {r['at']}: {'ok' if r['ok'] else 'FAILED: ' + r['why']}"
              + (f" (exit {r['exit']} after {r['seconds_to_exit']} s, checkpoint at step {r['checkpoint_step']})" if r["ok"] else ""),
              flush=True)
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} of {len(results)} tries ok, {len(failed)} failed "
          f"({args.processes} process{'es' if args.processes > 1 else ''}, SIGTERM and SIGUSR1 to the process group, "
          "mid-epoch and at an epoch's end)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
