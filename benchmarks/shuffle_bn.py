"""MoCo's shuffle-BN key forward on one device: one forward with per-sub-batch BatchNorm statistics
(what ``MoCoV2.embed_target`` runs) beside a forward per sub-batch (what it ran before), timed
side by side on the same keys.

    python benchmarks/shuffle_bn.py                  # ResNet-18 (CIFAR stem), MoCo v2's CIFAR heads, batch 256, 8 groups
    python benchmarks/shuffle_bn.py --tiny           # resnet_tiny, batch 32: any machine, CI

On a GPU (bf16 autocast, channels_last, as the GPU recipes run) and otherwise on this CPU. Both
paths normalise each sub-batch of the same permutation with its own statistics, so their keys
agree; the script checks that before it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from hardcl_lightning.batchnorm import frozen_batchnorm_stats  # noqa: E402
from hardcl_lightning.distributed import random_permutation, shuffled_batch_forward  # noqa: E402
from hardcl_lightning.methods import MoCoV2  # noqa: E402


def forward_per_sub_batch(model: MoCoV2, x: torch.Tensor, groups: int, generator: torch.Generator) -> torch.Tensor:
    """The keys by a forward of each sub-batch (the permutation's ``tensor_split`` chunks)."""
    perm = random_permutation(x.shape[0], x.device, generator)
    out = torch.cat([model.key_encoder(x[chunk]) for chunk in perm.tensor_split(groups)])
    return out[torch.argsort(perm)]


def one_forward(model: MoCoV2, x: torch.Tensor, groups: int, generator: torch.Generator) -> torch.Tensor:
    return shuffled_batch_forward(model.key_encoder, x, groups, generator,
                                  modules=(model.momentum_backbone, model.momentum_projector))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="resnet_tiny, batch 32, 2 repeats")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (32 with --tiny)")
    parser.add_argument("--groups", type=int, default=8, help="shuffle-BN sub-batches (8: the paper's GPUs)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards of each path (default 5; 2 with --tiny)")
    args = parser.parse_args()
    batch = args.batch_size or (32 if args.tiny else 256)
    repeats = args.repeats or (2 if args.tiny else 5)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = MoCoV2(backbone="resnet_tiny" if args.tiny else "resnet18", cifar_stem=True, proj_hidden_dim=64 if args.tiny else 2048,
                   proj_output_dim=128, queue_size=4 * batch, batch_size=batch, shuffle_bn_groups=args.groups,
                   channels_last=cuda).to(device).train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    paths = {"a forward per sub-batch": forward_per_sub_batch, "one forward, per-sub-batch statistics": one_forward}

    def run(path, seed: int) -> tuple[torch.Tensor, float]:
        generator = torch.Generator(device=device).manual_seed(seed)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        keys = paths[path](model, x, args.groups, generator)
        if cuda:
            torch.cuda.synchronize()
        return keys.float(), time.perf_counter() - start

    with torch.no_grad(), autocast, frozen_batchnorm_stats([model]):
        keys = {path: run(path, 1)[0] for path in paths}  # warm-up, and the keys both paths must agree on
        gap = (keys[list(paths)[0]] - keys[list(paths)[1]]).abs().max().item()
        tolerance = 5e-2 if cuda else 1e-4  # bf16 on a GPU
        if gap > tolerance:
            raise SystemExit(f"the two paths' keys differ by {gap:.2e} (> {tolerance:g}): not the same shuffle-BN")
        seconds = {path: statistics.median(run(path, 2 + i)[1] for i in range(repeats)) for path in paths}
    print(f"{machine()}; {'bf16, channels_last, ' if cuda else ''}batch {batch}, {args.groups} sub-batches, "
          f"{'resnet_tiny' if args.tiny else 'ResNet-18'}; median of {repeats}; keys agree to {gap:.1e}")
    print("| key forward | ms | x a forward per sub-batch |")
    print("|---|---|---|")
    base = seconds["a forward per sub-batch"]
    for path, s in seconds.items():
        print(f"| {path} | {s * 1000:.1f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
