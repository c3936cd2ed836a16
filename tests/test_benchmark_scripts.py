"""The benchmark scripts still run (tiny settings): they are how the README's figures are made."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_short_runs_reports_knn_and_factor_probe():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "short_runs.py"), "--methods", "simsiam", "--epochs", "1",
         "--num-train", "200", "--set", "data.init_args.batch_size=32", "data.init_args.num_val=100",
         "data.init_args.num_workers=0", "trainer.callbacks=[{class_path: hardcl_lightning.callbacks.OnlineKNN}]"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    knn_row = re.search(r"^\| simsiam \| ([\d.]+) \| ([\d.]+) \|", out.stdout, re.M)
    probe_row = re.search(r"^\| simsiam \| ([\d.]+) -> ([\d.]+) \|((?: [\d.]+ -> [\d.]+ \|){4})$", out.stdout, re.M)
    assert knn_row and probe_row, out.stdout[-2000:]
    # the probe's class accuracy is an independent computation of the OnlineKNN figures
    assert probe_row.group(1) == knn_row.group(1) and probe_row.group(2) == knn_row.group(2)
    assert "configs/tiny/<method>.yaml + data.init_args.batch_size=32" in out.stdout  # the overrides are reported


def test_short_runs_rejects_a_malformed_override():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "short_runs.py"), "--set", "lr0.1"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "--set takes KEY=VALUE pairs, got 'lr0.1'" in out.stderr


def test_lightly_short_runs_compares_side_by_side_or_skips():
    import importlib.util

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lightly_short_runs.py"), "--epochs", "1", "--num-train", "300"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    if importlib.util.find_spec("lightly") is None:
        assert "[skip] lightly is not installed" in out.stdout
        return
    ours = re.search(r"^\| hardcl_lightning \| ([\d.]+) \| ([\d.]+) \|", out.stdout, re.M)
    theirs = re.search(r"^\| lightly parts \| ([\d.]+) \| ([\d.]+) \|", out.stdout, re.M)
    assert ours and theirs, out.stdout[-2000:]
    # same seed, same backbone builder: both start from the same random network
    assert ours.group(1) == theirs.group(1)


def test_lightly_short_runs_skips_cleanly_without_lightly(tmp_path):
    (tmp_path / "lightly").mkdir()
    (tmp_path / "lightly" / "__init__.py").write_text("raise ImportError('lightly hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lightly_short_runs.py")],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == 0 and "[skip] lightly is not installed" in out.stdout, out.stderr[-2000:]
