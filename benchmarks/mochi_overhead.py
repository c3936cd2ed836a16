"""MoCHi's cost at the paper's sizes: the mixer vs a naive per-query loop, and MoCHi vs MoCo v2 steps.

    python benchmarks/mochi_overhead.py                     # K=16384 and 65536, N=1024, s=1024, s'=512, B=256, D=128
    python benchmarks/mochi_overhead.py --queue-sizes 16384 --repeats 3

1. The mixing operation alone (``mix_hard_negatives``, batched) against two references on the
   same inputs: a loop over queries with tensor ops inside (the pattern of public
   re-implementations) and a loop over queries and synthetic points (the tests' reference).
2. One training step of ``MoCHi`` vs ``MoCoV2`` (same ResNet-18 with CIFAR stem, 32 px images,
   batch B, queue K, projection D), interleaved repeats, median: the step-time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from hardcl_lightning.hard_negatives import mix_hard_negatives, mixed_negative_logits, sample_mixing_draws  # noqa: E402
from hardcl_lightning.methods import MoCHi, MoCoV2  # noqa: E402


@torch.no_grad()
def per_query_loop(q, bank, sims, n, draws):
    """One query at a time, tensor ops inside (the pattern of public re-implementations)."""
    out = []
    for b in range(q.shape[0]):
        hard = bank[sims[b].topk(n).indices]
        a = draws.alpha[b].unsqueeze(1)
        mixed = a * hard[draws.index_i[b]] + (1 - a) * hard[draws.index_j[b]]
        beta = draws.beta[b].unsqueeze(1)
        mixed_q = beta * q[b] + (1 - beta) * hard[draws.index_query_mix[b]]
        out.append(F.normalize(torch.cat([mixed, mixed_q]), dim=1))
    return torch.stack(out)


@torch.no_grad()
def naive_loop(q, bank, sims, n, draws):
    """One query and one synthetic point at a time (the loop of the tests' reference)."""
    out = []
    for b in range(q.shape[0]):
        hard = bank[sims[b].topk(n).indices]
        rows = []
        for t in range(draws.index_i.shape[1]):
            a = float(draws.alpha[b, t])
            rows.append(F.normalize(a * hard[draws.index_i[b, t]] + (1 - a) * hard[draws.index_j[b, t]], dim=0))
        for t in range(draws.index_query_mix.shape[1]):
            beta = float(draws.beta[b, t])
            rows.append(F.normalize(beta * q[b] + (1 - beta) * hard[draws.index_query_mix[b, t]], dim=0))
        out.append(torch.stack(rows))
    return torch.stack(out)


def median_ms(fn, repeats):
    if repeats > 1:
        fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue-sizes", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--mixing", type=int, nargs=3, default=[1024, 1024, 512], metavar=("N", "S", "S_PRIME"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-steps", action="store_true", help="only time the mixing operation")
    args = ap.parse_args()
    n, s, s2 = args.mixing
    b, d = args.batch_size, args.dim
    print(f"# MoCHi overhead: {machine()}; B={b}, D={d}, (N, s, s')=({n}, {s}, {s2}), median of {args.repeats}")
    print("\nSame inputs and similarities for all three (the q . bank product is shared with the loss in MoCHi).")
    print("MoCHi runs the closed form (logits q . h without building h); mix_hard_negatives builds the points.")
    print("\n| K | closed-form logits (ms) | mix_hard_negatives (ms) | per-query loop (ms) | per-query, per-point loop (ms) "
          "| closed form vs per-query loop | closed form vs per-point loop |")
    print("|---|---|---|---|---|---|---|")
    for k in args.queue_sizes:
        g = torch.Generator().manual_seed(0)
        q = F.normalize(torch.randn(b, d, generator=g), dim=1)
        bank = F.normalize(torch.randn(k, d, generator=g), dim=1)
        sims = q @ bank.T
        draws = sample_mixing_draws(b, n, s, s2, generator=g)
        closed = median_ms(lambda: mixed_negative_logits(q, bank, sims, n, s, s2, draws=draws), args.repeats)
        fast = median_ms(lambda: mix_hard_negatives(q, bank, n, s, s2, draws=draws, similarities=sims), args.repeats)
        loop = median_ms(lambda: per_query_loop(q, bank, sims, n, draws), max(1, args.repeats // 2))
        naive = median_ms(lambda: naive_loop(q, bank, sims, n, draws), 1)
        ref = per_query_loop(q, bank, sims, n, draws)
        same = torch.allclose(mix_hard_negatives(q, bank, n, s, s2, draws=draws, similarities=sims).synthetic, ref, atol=1e-5)
        print(f"| {k} | {closed:.1f} | {fast:.1f} | {loop:.1f} | {naive:.0f} | {loop / closed:.1f}x | {naive / closed:.0f}x"
              f"{'' if same else ' (OUTPUTS DIFFER)'} |", flush=True)
    if args.skip_steps:
        return
    print(f"\n| K | MoCo v2 step (ms) | MoCHi step (ms) | MoCHi / MoCo v2 |\n|---|---|---|---|")
    for k in args.queue_sizes:
        kw = dict(backbone=args.backbone, cifar_stem=True, proj_hidden_dim=2048, proj_output_dim=d, queue_size=k, batch_size=b)
        torch.manual_seed(0)
        moco = MoCoV2(**kw).train()
        mochi = MoCHi(mixing=(n, s, s2), mix_start_epoch=0, **kw).train()
        mochi.load_state_dict(moco.state_dict())
        mochi.log_dict = lambda *a, **kw_: None  # no trainer here
        opts = {m: torch.optim.SGD(m.parameters(), lr=1e-3) for m in (moco, mochi)}
        views = [torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1)) for _ in range(2)]

        def step(model):
            outs = model.embed(views)
            loss = model.training_loss(outs)
            opts[model].zero_grad(set_to_none=True)
            loss.backward()
            opts[model].step()
            model.after_training_loss(outs)

        times = {moco: [], mochi: []}
        for rep in range(args.repeats + 1):
            for m in (moco, mochi):
                t = time.perf_counter()
                step(m)
                if rep:
                    times[m].append(time.perf_counter() - t)
        a, c = (statistics.median(times[m]) * 1000 for m in (moco, mochi))
        print(f"| {k} | {a:.0f} | {c:.0f} | {c / a:.3f} |", flush=True)


if __name__ == "__main__":
    main()
