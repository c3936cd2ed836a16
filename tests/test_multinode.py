"""A 2-node x 1-process job simulated on one machine (loopback, gloo): two ``hardcl fit``
processes, node ranks 0 and 1, train a few DDP steps together and finish."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_two_nodes_on_loopback_train_and_finish(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "hardcl_lightning", "fit", "--config", str(REPO / "configs" / "tiny" / "simclr.yaml"),
           "--trainer.accelerator=cpu", "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp",
           "--trainer.max_steps=3", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
           "--data.init_args.num_train=256", "--data.init_args.num_val=64", "--data.init_args.batch_size=16",
           "--data.init_args.num_workers=0"]
    procs = []
    for node in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
               "LOCAL_RANK": "0", "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for node, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {node}:\n{out[-3000:]}"
        assert f"GLOBAL_RANK: {node}, MEMBER: {node + 1}/2" in out, out[-2000:]
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1  # written once, by global rank 0
    assert torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"] == 3


def test_generator_methods_train_under_ddp_with_two_processes(tmp_path):
    """The combined framework (three optimisers, manual backward passes, the hard-sample and
    positive-pair branches, the image-grid callback) on 2 CPU processes: no hang, a checkpoint."""
    cmd = [sys.executable, "-m", "hardcl_lightning", "fit", "--config", str(REPO / "configs" / "tiny" / "hardgen_full.yaml"),
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_find_unused_parameters_true",
           "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", f"--trainer.default_root_dir={tmp_path}",
           "--trainer.logger=false", "--model.init_args.joint_start_epoch=0", "--data.init_args.num_train=128",
           "--data.init_args.num_val=32", "--data.init_args.batch_size=16", "--data.init_args.num_workers=0"]
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr
    assert list(tmp_path.rglob("generated_epoch0.png")) and len(list(tmp_path.rglob("*.ckpt"))) == 1
