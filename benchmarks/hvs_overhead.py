"""HVS step time vs its base method, side by side in one run, against the analytic lower bound.

    python benchmarks/hvs_overhead.py                      # every method, resnet_tiny, batch 128, 32 px, N=4
    python benchmarks/hvs_overhead.py --methods SimSiam --backbone resnet18 --batch-size 64
    python benchmarks/hvs_overhead.py --methods SimSiam --selection-resolution 16   # cheaper selection

For each method three things are timed in interleaved repetitions on the same tensors (median):
``base`` (one training step on 2 views: forward, loss, backward, optimiser step), ``hvs`` (the
HVS step: no-grad scoring of N candidates, then the same training step on the chosen views) and
``nograd_N`` (the scoring pass alone: resizing to ``--selection-resolution`` if set, the no-grad
forward of N candidates, the pair losses). The analytic lower bound of the HVS/base ratio is
``(base + nograd_N) / base``: HVS cannot cost less than its extra forwards. Momentum methods can
land below it: their HVS training step reuses the target outputs of the scoring pass.
On a GPU (``--device cuda``) the same runs at ``--precision bf16`` under autocast.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from hardcl_lightning import methods  # noqa: E402

HEADS = {
    "SimCLR": dict(proj_hidden_dim=512, proj_output_dim=128),
    "MoCoV2": dict(proj_hidden_dim=512, proj_output_dim=128, queue_size=4096),
    "SimSiam": dict(proj_hidden_dim=512, proj_output_dim=512, proj_num_layers=2, pred_hidden_dim=128),
    "BYOL": dict(proj_hidden_dim=512, proj_output_dim=128),
    "DINO": dict(proj_hidden_dim=512, bottleneck_dim=128, num_prototypes=4096),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--backbone", default="resnet_tiny")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num-candidates", type=int, default=4)
    ap.add_argument("--selection-resolution", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    print(f"# HVS overhead: {machine()}; {args.backbone}, batch {args.batch_size}, {args.image_size} px, "
          f"N={args.num_candidates}, selection at {args.selection_resolution or args.image_size} px, {args.precision}, "
          f"median of {args.repeats} interleaved repeats")
    print("| method | base step (ms) | HVS step (ms) | no-grad N-view forward (ms) | HVS/base | analytic bound | measured / bound |")
    print("|---|---|---|---|---|---|---|")
    for name in args.methods:
        torch.manual_seed(0)
        kw = dict(backbone=args.backbone, cifar_stem=True, image_size=args.image_size, batch_size=args.batch_size, **HEADS[name])
        base = getattr(methods, name)(**kw).to(dev).train()
        hvs = getattr(methods, f"HVS{name}")(num_views=args.num_candidates, selection_resolution=args.selection_resolution,
                                             **kw).to(dev).train()
        hvs.load_state_dict(base.state_dict())
        hvs.log = hvs.log_dict = lambda *a, **k: None  # no trainer here
        opts = {m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (base, hvs)}
        g = torch.Generator().manual_seed(1)
        cands = [torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(dev)
                 for _ in range(args.num_candidates)]

        def train_step(model, views):
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = model.training_loss(model.embed(views))
            opts[model].zero_grad(set_to_none=True)
            loss.backward()
            opts[model].step()

        def run_base():
            train_step(base, cands[:2])

        def run_hvs():
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                chosen = hvs.select_views({"views": cands})
            train_step(hvs, chosen)

        def run_nograd():
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                hvs.score_candidates(cands, hvs.pairs)

        times: dict[str, list[float]] = {"base": [], "hvs": [], "nograd": []}
        fns = {"base": run_base, "hvs": run_hvs, "nograd": run_nograd}
        for rep in range(args.repeats + 2):
            for key, fn in fns.items():
                sync()
                t = time.perf_counter()
                fn()
                sync()
                if rep >= 2:  # warm-up
                    times[key].append(time.perf_counter() - t)
        b, h, n = (statistics.median(times[k]) * 1000 for k in ("base", "hvs", "nograd"))
        bound = (b + n) / b
        print(f"| {name} | {b:.0f} | {h:.0f} | {n:.0f} | {h / b:.2f}x | {bound:.2f}x | {h / b / bound:.3f} |", flush=True)


if __name__ == "__main__":
    main()
