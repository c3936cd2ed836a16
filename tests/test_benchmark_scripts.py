"""The benchmark scripts still run (tiny settings): they are how the README's figures are made."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def _record(base, variant, seed, knn, **kw):
    return {"base": base, "variant": variant, "seed": seed, "config": f"configs/{variant}_{base}.yaml", "knn_init": 0.2,
            "knn": knn, "linear": knn + 0.05, "loss_first_epoch": 5.0, "loss_last_epoch": 4.0, "chance_loss": 5.54,
            "minutes": 2.0, "epochs": 15, "fraction": 0.1, "batch_size": 128, "train_images": 5000, **kw}


def test_hvs_real_table_pairs_seeds_and_lists_missing_runs():
    """The HVS - base gap pairs runs of the same seed (hand-computed), mean ± std over seeds, and the
    runs not recorded yet are named."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import hvs_real

    runs = [_record("simclr", "base", 0, 0.30), _record("simclr", "base", 1, 0.34),
            _record("simclr", "hvs", 0, 0.33), _record("simclr", "hvs", 1, 0.35)]
    wanted = [(b, v, s) for s in (0, 1) for b in ("simclr", "mocov2") for v in ("base", "hvs")]
    lines = hvs_real.table(runs, wanted)
    hvs_row = next(line for line in lines if line.startswith("| HVS-SimCLR"))
    cells = [c.strip() for c in hvs_row.strip("|").split("|")]
    assert cells[2] == "0,1" and cells[4] == "34.0 ± 1.4"  # kNN of 33 and 35
    assert cells[5] == "+2.0 ± 1.4"  # gaps +3 and +1
    assert lines[-1] == "Not run yet: `mocov2_base_seed0`, `mocov2_hvs_seed0`, `mocov2_base_seed1`, `mocov2_hvs_seed1`."


def test_hvs_real_chance_losses_and_skip_without_the_archive(tmp_path):
    import math

    sys.path.insert(0, str(REPO / "benchmarks"))
    import hvs_real

    from hardcl_lightning.methods import HVSSimCLR, MoCoV2

    tiny = dict(backbone="resnet_tiny", cifar_stem=True, proj_hidden_dim=16, proj_output_dim=8)
    assert hvs_real.chance_loss(HVSSimCLR(**tiny, batch_size=128)) == pytest.approx(math.log(255))
    assert hvs_real.chance_loss(MoCoV2(**tiny, queue_size=4096)) == pytest.approx(math.log(4097))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hvs_real.py"), "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "HARDCL_CIFAR10_TAR": str(tmp_path / "absent.tar.gz"),
                              "HARDCL_BENCH_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0 and "skipped: no CIFAR-10 archive" in out.stdout
    assert not list(tmp_path.glob("*.json"))


def test_gpu_epoch_tiny_prints_every_arm_against_the_bound(tmp_path):
    """The tiny run (what CI can do): a row per method and data path, the bound's ratio 1.00, and
    the seconds per epoch = ms/step x 50000 / batch."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_epoch.py"), "--tiny", "--methods", "SimCLR", "MoCHi",
                          "--steps", "2", "--warmup", "1", "--workers", "1", "--profile-steps", "1"], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # no run files where it was started
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| ") and "ms / step" not in line]
    rows = [[c.strip() for c in r] for r in rows]
    assert [(r[0], r[1]) for r in rows] == [(m, p) for m in ("SimCLR", "MoCHi") for p in ("cpu", "device", "resident", "bound")]
    for r in rows:
        assert float(r[3]) == pytest.approx(float(r[2]) / 1000 * (50000 // 32), rel=0.01, abs=0.1)
        if r[1] == "bound":
            assert r[4] == "1.00"
    profiles = re.findall(r"^profile (\S+) / (\w+): [\d.]+ ms a step profiled, no GPU; most CPU time \(ms a step\): aten::\w+ [\d.]+",
                          out.stdout, re.M)
    assert profiles == [(m, p) for m in ("SimCLR", "MoCHi") for p in ("cpu", "device", "resident", "bound")], out.stdout


def test_gpu_epoch_compiled_path_is_the_resident_path_with_the_view_recipe_compiled(monkeypatch):
    """Named in ``--paths`` only (its compilation costs GPU minutes): the resident arm's command
    line plus ``compile_views: inductor``, which the CLI takes."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_epoch import PATHS, arm_args

    from hardcl_lightning.cli import build_cli

    def argv(path):
        return [a for a in arm_args("simclr_cifar10", [], path, True, None, 32, 1, 5) if "default_root_dir" not in a]

    assert "compiled" not in PATHS
    resident, compiled = argv("resident"), argv("compiled")
    assert [a for a in compiled if a not in resident] == ["--data.compile_views=inductor"]
    assert [a for a in resident if a not in compiled] == []
    assert build_cli(arm_args("simclr_cifar10", [], "compiled", True, None, 32, 1, 5), run=False).datamodule.compile_views == "inductor"


def test_gpu_epoch_profile_summary_reads_gpu_and_cpu_events(monkeypatch):
    """The summary's arithmetic on made-up profiler rows (profiler times are microseconds, summed
    over the profiled steps): with kernel time, the GPU's busy share of the wall time, launches and
    the top ops by GPU time; without, the top ops by CPU time."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_epoch import StepProfile

    from torch.autograd import DeviceType

    def row(key, count, device, cpu, device_type=DeviceType.CPU):
        return SimpleNamespace(key=key, count=count, self_device_time_total=device, self_cpu_time_total=cpu,
                               device_type=device_type, is_user_annotation=False)

    profile = StepProfile(skip=0, steps=2)
    profile.wall = 0.010  # 10 ms over 2 steps: 5 ms a step
    kernel = DeviceType.CUDA  # each kernel's own row: its time is counted once, with the host op that launched it
    profile.events = [row("aten::convolution", 40, 4000.0, 1000.0), row("cudaLaunchKernel", 700, 0.0, 2000.0),
                      row("aten::add_", 100, 1000.0, 500.0), row("sm90_xmma_fprop", 40, 4000.0, 0.0, kernel),
                      row("elementwise_kernel", 100, 1000.0, 0.0, kernel)]
    assert profile.summary(top=2) == ("5.0 ms a step profiled, GPU busy 2.5 ms (50%), 350 kernel launches; most GPU time "
                                      "(ms a step): aten::convolution 2.00, aten::add_ 0.50")
    profile.events = [row("aten::convolution", 40, 0.0, 1000.0), row("aten::add_", 100, 0.0, 3000.0)]
    assert profile.summary(top=1) == "5.0 ms a step profiled, no GPU; most CPU time (ms a step): aten::add_ 1.50"
    assert StepProfile(skip=0, steps=2).summary() == "not profiled (the run ended first)"


def test_shuffle_bn_times_both_key_forwards_on_the_same_keys():
    """The tiny run: both paths' rows, the per-sub-batch forward as the 1.00 reference, and keys
    that agree (the script refuses to print timings of paths that compute different keys)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "shuffle_bn.py"), "--tiny"], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"keys agree to [\d.e+-]+$", out.stdout, re.M), out.stdout
    rows = re.findall(r"^\| (a forward per sub-batch|one forward, per-sub-batch statistics) \| ([\d.]+) \| ([\d.]+) \|$",
                      out.stdout, re.M)
    assert [r[0] for r in rows] == ["a forward per sub-batch", "one forward, per-sub-batch statistics"], out.stdout
    assert rows[0][2] == "1.00" and float(rows[1][2]) == pytest.approx(float(rows[1][1]) / float(rows[0][1]), abs=0.01)


def test_gpu_epoch_data_only_counts_every_view_of_each_path(tmp_path):
    """No model: a row of views/s of the three paths and their ratios to the cpu path."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_epoch.py"), "--tiny", "--data-only", "--methods",
                          "HVS-SimCLR", "--steps", "3", "--warmup", "1", "--workers", "0"], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.stdout.splitlines() if line.startswith("| HVS")]
    assert len(rows) == 1
    cpu, device, resident, device_ratio, resident_ratio = (float(c) for c in rows[0][1:])
    assert cpu > 0 and device > 0 and resident > 0
    assert device_ratio == pytest.approx(device / cpu, rel=0.01, abs=0.01)
    assert resident_ratio == pytest.approx(resident / cpu, rel=0.01, abs=0.01)


def test_gpu_suite_chooses_the_largest_epoch_count_that_fits_and_writes_its_table(tmp_path, monkeypatch):
    """E by hand: two arms of 10 s and 20 s per epoch, 5 s per evaluation every 2 epochs, 200 s left:
    E=5 costs 150 + 2 x 3 x 5 = 180 s, E=6 costs 180 + 2 x 4 x 5 = 220 s. The table lists every
    evaluation epoch of every arm."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite

    probes = {"a": {"step_seconds": 0.1, "steps_per_epoch": 100}, "b": {"step_seconds": 0.2, "steps_per_epoch": 100}}
    epochs, why = gpu_suite.choose_epochs(probes, budget_s=260, spent_s=60, eval_every=2, eval_s=5)
    assert epochs == 5 and "30.0 s per epoch" in why
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept\n")
    monkeypatch.setattr(gpu_suite, "RESULTS", results)
    row = {"train_images": 50000, "images_per_s": 1234.4, "knn": [(0, 0.2), (2, 0.41), (4, 0.5)]}
    gpu_suite.write_results([("SimCLR", "simclr_cifar10", row), ("MoCHi", "mochi_cifar10", {**row, "knn": [(0, 0.2), (4, 0.55)]})],
                            4, "why", "python benchmarks/gpu_suite.py", 7.5)
    text = results.read_text()
    assert text.startswith("# Results\n\nkept\n") and "| kNN ep 0 (%) | kNN ep 2 (%) | kNN ep 4 (%) |" in text
    assert "| SimCLR | `simclr_cifar10` | 1234 | 20.0 | 41.0 | 50.0 |" in text and "| MoCHi | `mochi_cifar10` | 1234 | 20.0 | - | 55.0 |" in text
    gpu_suite.write_results([("SimCLR", "simclr_cifar10", row)], 4, "why", "cmd", 1.0)  # replaces its own section
    assert results.read_text().count("## Real-scale CIFAR-10 on one GPU") == 1


def test_gpu_suite_tiny_trains_its_arms(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--tiny", "--epochs", "1", "--workers", "1",
                          "--arms", "HVS-SimCLR", "MoCHi", "--no-write"], capture_output=True, text=True, timeout=900,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # no run files where it was started
    for name in ("HVS-SimCLR", "MoCHi"):
        assert re.search(rf"^{re.escape(name)}: kNN ep 0: [\d.]+, ep 1: [\d.]+ %, \d+ img/s$", out.stdout, re.M), out.stdout


def test_gpu_suite_generator_table_and_compute_matched_epochs():
    """By hand: A at 0.10 s a step, C_latent at 0.25 s, so Acm gets 2.5 x E epochs (at least E);
    each row's gap to A and step-time ratio are its own over A's."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite

    timed = {"A": {"step_seconds": 0.10}, "C_latent": {"step_seconds": 0.25}}
    assert gpu_suite.acm_epochs(10, timed) == 25 and gpu_suite.acm_epochs(2, timed) == 5
    assert gpu_suite.acm_epochs(10, {"A": {"step_seconds": 0.3}, "C_latent": {"step_seconds": 0.25}}) == 10
    row = {"train_images": 10000, "epochs": 10, "images_per_s": 2560.0}
    rows = {"A": {**row, "knn": 0.50, "linear": 0.55, "step_seconds": 0.10},
            "C_latent": {**row, "knn": 0.52, "linear": 0.56, "step_seconds": 0.25, "hard/gen_pixel_std_epoch": 0.2},
            "Acm": {**row, "epochs": 25, "knn": 0.58, "linear": 0.60, "step_seconds": 0.10}}
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in gpu_suite.generator_table(rows) if line.startswith("| ") and not line.startswith("| arm")}
    assert cells["A"][3:10] == ["10000", "10", "50.0", "+0.0", "55.0", "2560", "1.00"]
    assert cells["C_latent"][5:7] == ["52.0", "+2.0"] and cells["C_latent"][9] == "2.50" and "0.200" in cells["C_latent"][10]
    assert cells["Acm"][4:7] == ["25", "58.0", "+8.0"] and cells["Acm"][9] == "1.00"


def test_gpu_suite_refuses_an_arm_of_the_other_suite(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--suite", "generators", "--tiny",
                          "--arms", "A", "MoCHi"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode != 0 and "--arms MoCHi: not an arm of --suite generators" in out.stderr and "C_latent" in out.stderr


def test_gpu_suite_tiny_trains_the_generator_arms_from_a_gan_of_their_subset(tmp_path):
    """The GAN is pre-trained on the arms' subset (the joint arms refuse a GAN of other images),
    every arm ends with kNN and linear accuracy, and Acm's epochs follow A's and C_latent's step times.
    On Shapes10 (no archive): 10,000 CIFAR-10 test images to embed per arm would be most of the time."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "HARDCL_CIFAR10_TAR": str(tmp_path / "absent.tar.gz"), "HARDCL_BENCH_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--suite", "generators", "--tiny",
                          "--epochs", "1", "--workers", "0", "--arms", "A", "C_latent", "Acm", "--no-write"],
                         capture_output=True, text=True, timeout=900, cwd=run_dir, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(run_dir.iterdir())  # no run files where it was started
    assert re.search(r"^GAN pre-trained 1 epochs in [\d.]+ min$", out.stdout, re.M), out.stdout
    for arm in ("A", "C_latent", "Acm"):
        assert re.search(rf"^{arm}: \d+ epochs, kNN [\d.]+ %, linear [\d.]+ %, \d+ img/s$", out.stdout, re.M), out.stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| arm")}
    assert list(rows) == ["A", "C_latent", "Acm"]
    assert int(rows["Acm"][4]) == max(1, round(float(rows["C_latent"][9])))  # E=1 x the step-time ratio (to 2 places)


def test_gpu_session_runs_the_epoch_table_then_a_suite_in_the_time_left(tmp_path):
    """The one command a lent GPU runs, at the tiny size and with each script's arguments passed on:
    its logs and RESULTS.md land in $OUT; a wrong argument is refused naming what is accepted."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "GPU_SESSION_MINUTES": "5",
           "HARDCL_CIFAR10_TAR": str(tmp_path / "absent.tar.gz"), "HARDCL_BENCH_CACHE": str(tmp_path / "cache"),
           "GPU_EPOCH_ARGS": "--methods 'MoCo v2' --paths bound --steps 2 --warmup 1 --workers 0",  # quotes kept
           "GPU_SUITE_ARGS": "--epochs 1 --arms SimCLR --workers 0"}
    script = str(REPO / "benchmarks" / "gpu_session.sh")
    out = subprocess.run(["bash", script, "--tiny", "contrastive"], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    logs = tmp_path / "out"
    assert sorted(p.name for p in logs.iterdir()) == ["RESULTS.md", "gpu_epoch.log", "gpu_suite_contrastive.log", "machine.log", "shuffle_bn.log"]
    assert re.search(r"^\| MoCo v2 \| bound \| [\d.]+ \|", (logs / "gpu_epoch.log").read_text(), re.M)
    assert re.search(r"^\| one forward, per-sub-batch statistics \| [\d.]+ \|", (logs / "shuffle_bn.log").read_text(), re.M)
    left = float(re.search(r"gpu_suite.py --suite contrastive gets ([\d.-]+) min", (logs / "machine.log").read_text()).group(1))
    assert 0 < left < 4.5  # 5 minutes less gpu_epoch.py's time and half a minute
    assert re.search(r"^SimCLR: kNN ep 0: [\d.]+, ep 1: [\d.]+ %", (logs / "gpu_suite_contrastive.log").read_text(), re.M)
    assert (logs / "RESULTS.md").read_text() == (REPO / "benchmarks" / "RESULTS.md").read_text()  # --tiny writes nothing
    bad = subprocess.run(["bash", script, "generator"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "unknown argument 'generator' (accepted: wheels, contrastive, generators, --tiny)" in bad.stderr


def test_hvs_real_diagnostic_rows_are_their_own_and_pair_with_the_base():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import hvs_real

    runs = [_record("mocov2", "base", 0, 0.38), _record("mocov2", "hvs", 0, 0.33),
            _record("mocov2", "hvs", 0, 0.36, overrides=["model.reuse_targets=false"])]
    lines = hvs_real.table(runs, [("mocov2", "hvs", 0, ("model.reuse_targets=false",))])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("| ")}
    assert rows["HVS-MoCo v2, hvs [reuse_targets=false]"][5] == "-2.0" and rows["HVS-MoCo v2, hvs"][5] == "-5.0"
    assert not any(line.startswith("Not run yet") for line in lines)
    assert hvs_real.run_name("mocov2", "hvs", 1, ("model.reuse_targets=false",)) == "mocov2_hvs_reuse_targets-false_seed1"
    assert hvs_real.run_name("mocov2", "paper", 1, (), epochs=30) == "mocov2_paper_e30_seed1"


def test_hvs_real_variants_name_their_configs_and_the_crossover_pairs_each_length_with_its_base():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import hvs_real

    rel = lambda paths: [str(p.relative_to(REPO / "configs")) for p in paths]  # noqa: E731
    assert rel(hvs_real.config_paths("mocov2", "base")) == ["mocov2_cifar10.yaml"]
    assert rel(hvs_real.config_paths("mocov2", "hvs")) == ["hvs_mocov2.yaml"]
    assert rel(hvs_real.config_paths("dino_short", "paper")) == ["hvs_dino.yaml", "overlays/dino_short_schedule.yaml",
                                                                  "overlays/hvs_paper_rule.yaml"]
    assert all(p.is_file() for b in hvs_real.BASES for v in hvs_real.VARIANTS for p in hvs_real.config_paths(b, v))
    with pytest.raises(ValueError, match="unknown variant 'hard'"):
        hvs_real.config_paths("simclr", "hard")
    runs = [_record("simclr", "base", 0, 0.30), _record("simclr", "paper", 0, 0.32, hardest_share=1.0),
            _record("simclr", "base", 0, 0.40, epochs=30), _record("simclr", "base", 1, 0.44, epochs=30),
            _record("simclr", "paper", 0, 0.37, epochs=30, hardest_share=1.0)]
    lines = hvs_real.crossover_table(runs)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert rows["SimCLR"][:4] == ["30.0 (seeds 0)", "-", "42.0 ± 2.8 (seeds 0,1)", "-"]
    assert rows["HVS-SimCLR, paper"][:4] == ["32.0 (seeds 0)", "+2.0", "37.0 (seeds 0)", "-3.0"]  # seed 0's base only
    assert rows["HVS-SimCLR, paper"][4:] == ["-", "-"]  # no 60-epoch runs
    main = hvs_real.table([r for r in runs if r["epochs"] == 15], [])
    paper = next(line for line in main if line.startswith("| HVS-SimCLR, paper"))
    assert [c.strip() for c in paper.split("|")][8] == "100"  # trained on the hardest pair, %


def test_hard_sample_gen_runs_every_arm_and_matches_compute(tmp_path):
    """Every arm at a tiny size, one seed: the table has each arm, B/C arms their diagnostics, the
    pre-trained GAN is accepted by the joint runs (same subset), the arms are timed side by side
    and Acm gets more epochs than A. A second call finds every record and runs nothing."""
    cwd, runs, cache = tmp_path / "cwd", tmp_path / "runs", tmp_path / "cache"
    cwd.mkdir()
    script = [sys.executable, str(REPO / "benchmarks" / "hard_sample_gen.py"), "--epochs", "1", "--gan-epochs", "1",
              "--num-train", "400", "--batch-size", "16", "--no-write", "--runs-dir", str(runs), "--gan-cache", str(cache),
              "--timing-batches", "3", "--timing-rounds", "1"]
    out = subprocess.run([*script, "--arms", "A", "A2x", "Acm", "B", "C", "C_latent", "C_residual", "D", "E", "--seeds", "0"],
                         capture_output=True, text=True, timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list(runs.glob("shapes_f0.2_e1_*_seed0.json"))) == 9 and len(list(cache.glob("*.ckpt"))) == 1
    timing = json.loads((runs / "shapes_f0.2_e1_timing.json").read_text())["ms_per_batch"]
    assert set(timing) == {"A", "B", "C", "C_latent", "C_residual", "D", "E"}  # A2x and Acm cost A's per batch
    assert timing["C"] > timing["A"] and "side-by-side ms / batch" in out.stdout
    again = subprocess.run([*script, "--arms", "A", "Acm", "B", "--seeds", "0"], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not re.search(r"^\w+ seed 0: kNN", again.stdout, re.M) and "side-by-side" not in again.stdout  # nothing re-run
    assert {m.group(1) for m in re.finditer(r"^\| (A|Acm|B) \|", again.stdout, re.M)} == {"A", "Acm", "B"}
    assert "Not run yet" not in again.stdout
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (A|A2x|Acm|B|C|C_latent|C_residual|D|E) \|.*$", out.stdout, re.M)}
    assert set(rows) == {"A", "A2x", "Acm", "B", "C", "C_latent", "C_residual", "D", "E"}, out.stdout[-2000:]
    cells = {arm: [c.strip() for c in row.strip("|").split("|")] for arm, row in rows.items()}
    assert cells["A"][2] == "80" and cells["A2x"][2] == "160"  # images: the fraction, and twice it
    assert int(cells["Acm"][3]) > int(cells["A"][3])  # C's steps are slower: A gets more epochs to match
    assert cells["B"][-1].split(", ")[0] != "-" and cells["A"][-1].startswith("-")  # generated/real loss ratio
    assert not list(cwd.iterdir())  # no run files in the cwd


def test_results_table_replaces_only_its_own_section(tmp_path, monkeypatch):
    """results.py once rewrote the whole of RESULTS.md, dropping every other script's table."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import results

    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nanother script's table\n")
    monkeypatch.setattr(results, "RESULTS", path)
    row = {"config": "simclr", "method": "SimCLR", "train_images": 5000, "knn_init": 0.27, "knn": 0.39, "linear": 0.43,
           "images_per_s": 434.0, "peak_mb": 1194.0, "minutes": 0.6}
    for _ in range(2):
        results.write_results("python benchmarks/results.py", 3, 0.1, [row], [], [])
    text = path.read_text()
    assert "another script's table" in text and text.count("# Results on real CIFAR-10 (small CPU schedule)") == 1
    assert "| SimCLR |" in text


def test_host_sync_says_which_torch_it_needs(monkeypatch):
    """On a torch whose meta device lacks ops the audit needs, it refuses by name instead of
    failing inside a step; DINO's recipes need a newer one than the rest."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import host_sync

    monkeypatch.setattr(host_sync, "torch_release", lambda: (2, 8))
    assert host_sync.unsupported() is None and host_sync.unsupported("mochi_cifar10") is None
    assert "the hvs_dino recipe needs torch >= 2.10 on the meta device" in host_sync.unsupported("hvs_dino")
    monkeypatch.setattr(host_sync, "torch_release", lambda: (2, 6))
    assert "this audit needs torch >= 2.7 on the meta device" in host_sync.unsupported()
    assert "this audit needs torch >= 2.7" in host_sync.unsupported("simclr_cifar10")
    assert "the dino_cifar10 recipe needs torch >= 2.10" in host_sync.unsupported("dino_cifar10")
    monkeypatch.setattr(host_sync, "torch_release", lambda: (3, 0))
    assert all(host_sync.unsupported(r) is None for r in host_sync.RECIPES + host_sync.GENERATOR_RECIPES)


def test_host_sync_prints_each_recipes_round_trips_and_kernels():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from host_sync import unsupported

    if reason := unsupported():
        out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "host_sync.py")], capture_output=True, text=True,
                             timeout=300, cwd=REPO)
        assert out.returncode == 2 and reason in out.stderr, out.stderr[-3000:]  # refused, and says why
        pytest.skip(reason)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "host_sync.py"), "--recipes", "simclr_cifar10", "hvs_simclr",
                          "gan_pretrain_cifar10", "--batch-size", "16"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    for recipe, reads in (("simclr_cifar10", 1), ("hvs_simclr", 1), ("gan_pretrain_cifar10", 2)):  # the GAN: G's and D's guards
        row = re.search(rf"^\| {recipe} \| (\d+) \| 0 \| (\d+) \| {reads} _local_scalar_dense at base\.py:\d+ \|$", out.stdout, re.M)
        assert row and int(row.group(1)) > 100 and int(row.group(2)) > 200, out.stdout  # a ResNet-18 step: hundreds
