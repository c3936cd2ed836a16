"""Hard negative mixing (MoCHi, Kalantidis et al., NeurIPS 2020, sec. 4), as a standalone function.

For each query q and a bank of negatives (MoCo's queue, or SimCLR's in-batch negatives):

1. take the N hardest negatives of *this* query, by similarity q . n;
2. s synthetic negatives ``h = normalize(a n_i + (1 - a) n_j)``, a ~ U(0, 1), i != j drawn from those N (eq. 3);
3. s' synthetic negatives ``h' = normalize(b q + (1 - b) n_j)``, b ~ U(0, 0.5) (eq. 4; b < 0.5 keeps the
   query's own contribution below the negative's).

The synthetic points are detached: gradient reaches the query only through the logit q . h. The
whole computation is batched: indices into the N hardest are composed with the top-N indices and
rows are gathered straight from the bank; nothing loops over queries or over s.
``mixed_negative_logits`` gives the logits q . h alone in closed form (what MoCHi's loss uses).
Usage on any bank::

    mixed = mix_hard_negatives(q, bank, num_hard=1024, num_mix=1024, num_mix_query=512)
    extra_logits = (F.normalize(q, dim=1).unsqueeze(1) * mixed.synthetic).sum(-1) / temperature
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MixingDraws:
    """The random draws of one mixing step (shapes [B, s] and [B, s'])."""

    index_i: torch.Tensor
    index_j: torch.Tensor
    alpha: torch.Tensor
    index_query_mix: torch.Tensor
    beta: torch.Tensor


@dataclass
class MixedNegatives:
    synthetic: torch.Tensor  # [B, s + s', D], unit norm, no gradient
    hard_index: torch.Tensor  # [B, N] indices into the bank, hardest first
    hard_similarity: torch.Tensor  # [B, N]
    draws: MixingDraws


def sample_mixing_draws(
    batch: int, num_hard: int, num_mix: int, num_mix_query: int, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> MixingDraws:
    """Index pairs i != j in [0, N), a ~ U(0, 1), query-mix indices and b ~ U(0, 0.5), drawn where
    they are used (``device``; a ``generator`` draws on its own device): nothing is copied from
    the CPU (about 7 MB per step at the paper's sizes)."""
    if num_mix > 0 and num_hard < 2:
        raise ValueError(f"mixing two negatives needs num_hard >= 2, got {num_hard}")
    kw = dict(device=generator.device if generator is not None else device, generator=generator)
    i = torch.randint(num_hard, (batch, num_mix), **kw)
    j = torch.randint(max(1, num_hard - 1), (batch, num_mix), **kw)
    j = j + (j >= i).long()  # uniform over [0, N) \\ {i}
    alpha = torch.rand(batch, num_mix, **kw)
    jq = torch.randint(num_hard, (batch, num_mix_query), **kw)
    beta = 0.5 * torch.rand(batch, num_mix_query, **kw)
    return MixingDraws(*(t.to(device) for t in (i, j, alpha, jq, beta)))


@torch.no_grad()
def mix_hard_negatives(
    query: torch.Tensor,
    negatives: torch.Tensor,
    num_hard: int,
    num_mix: int,
    num_mix_query: int,
    draws: MixingDraws | None = None,
    generator: torch.Generator | None = None,
    similarities: torch.Tensor | None = None,
) -> MixedNegatives:
    """Synthesise ``num_mix + num_mix_query`` hard negatives per query (see module docstring).

    Args:
        query: [B, D] queries (normalised here).
        negatives: [K, D] bank shared by all queries, or [B, K, D] one bank per query.
        num_hard: N, hardest negatives per query to mix from (N <= K).
        num_mix: s, mixes of two hard negatives.
        num_mix_query: s', mixes of the query with one hard negative.
        draws: fixed random draws (tests); sampled when None.
        similarities: [B, K] cosines of query and bank when the caller already has them.
    """
    q = F.normalize(query.float(), dim=-1)
    bank = F.normalize(negatives.float(), dim=-1)
    k = bank.shape[-2]
    if not 1 <= num_hard <= k:
        raise ValueError(f"num_hard (N) must be in [1, {k}] (the number of negatives), got {num_hard}")
    if num_mix < 0 or num_mix_query < 0:
        raise ValueError(f"num_mix (s) and num_mix_query (s') must be >= 0, got {num_mix} and {num_mix_query}")
    b, d = q.shape
    if similarities is not None:
        sims = similarities.float()
    else:
        sims = torch.einsum("bd,kd->bk", q, bank) if bank.dim() == 2 else torch.einsum("bd,bkd->bk", q, bank)
    hard_sim, hard_idx = sims.topk(num_hard, dim=1)  # [B, N], hardest first
    if draws is None:
        draws = sample_mixing_draws(b, num_hard, num_mix, num_mix_query, q.device, generator)

    def pick(index: torch.Tensor) -> torch.Tensor:
        """[B, M] positions among the N hardest -> [B, M, D] bank rows, gathered straight from the bank
        (composing the indices avoids materialising the [B, N, D] hard set)."""
        rows = hard_idx.gather(1, index)
        return bank[rows] if bank.dim() == 2 else bank.gather(1, rows.unsqueeze(-1).expand(-1, -1, d))

    synthetic = torch.empty(b, num_mix + num_mix_query, d, device=q.device)
    if num_mix:
        # a n_i + (1 - a) n_j == lerp(n_j, n_i, a)
        synthetic[:, :num_mix] = torch.lerp(pick(draws.index_j), pick(draws.index_i), draws.alpha.unsqueeze(-1))
    if num_mix_query:
        synthetic[:, num_mix:] = torch.lerp(pick(draws.index_query_mix), q.unsqueeze(1), draws.beta.unsqueeze(-1))
    synthetic.div_(synthetic.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return MixedNegatives(synthetic, hard_idx, hard_sim, draws)


def mixed_negative_logits(
    query: torch.Tensor,
    bank: torch.Tensor,
    similarities: torch.Tensor,
    num_hard: int,
    num_mix: int,
    num_mix_query: int,
    draws: MixingDraws | None = None,
    generator: torch.Generator | None = None,
    hardest: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines ``q . h`` [B, s + s'] of MoCHi's synthetic negatives, without building them.

    Same values (and the same gradient with respect to ``query``, the synthetic points being
    constants) as ``q . mix_hard_negatives(...).synthetic``, from quantities the loss already has:
    for unit-norm bank rows, ``q.h_ij = (a q.n_i + (1-a) q.n_j) / sqrt(a^2 + (1-a)^2 + 2a(1-a) n_i.n_j)``
    and ``q.h'_j = (b q.q^ + (1-b) q.n_j) / sqrt(b^2 + (1-b)^2 + 2b(1-b) q^.n_j)`` with q^ the
    detached query. Only ``n_i . n_j`` needs bank rows; nothing of size [B, s + s', D] is written
    but the two gathered operands of that dot product.

    Args:
        query: [B, D] L2-normalised queries (may carry gradient).
        bank: [K, D] L2-normalised negatives (a shared bank, e.g. MoCo's queue).
        similarities: ``query @ bank.T`` [B, K] (may carry gradient; the loss reuses it).
        hardest: ``similarities.detach().topk(num_hard, dim=1)`` when the caller has it (MoCHi's
            diagnostics use the indices too): computed here when None.
    Returns:
        (cosines [B, s + s'], the N hardest similarities [B, N], hardest first)
    """
    if bank.dim() != 2:
        raise ValueError("mixed_negative_logits takes one shared [K, D] bank; use mix_hard_negatives for per-query banks")
    k = bank.shape[0]
    if not 1 <= num_hard <= k:
        raise ValueError(f"num_hard (N) must be in [1, {k}] (the number of negatives), got {num_hard}")
    b = query.shape[0]
    hard_sim, hard_idx = hardest if hardest is not None else similarities.detach().topk(num_hard, dim=1)
    if draws is None:
        draws = sample_mixing_draws(b, num_hard, num_mix, num_mix_query, query.device, generator)
    parts = []
    if num_mix:
        rows_i, rows_j = hard_idx.gather(1, draws.index_i), hard_idx.gather(1, draws.index_j)
        a = draws.alpha
        with torch.no_grad():  # in batch chunks: the gathered operands stay cache-sized (a loop over chunks, not samples)
            ninj = torch.cat([torch.einsum("bsd,bsd->bs", bank[ri], bank[rj])
                              for ri, rj in zip(rows_i.split(16), rows_j.split(16))])
            norm = (a * a + (1 - a) ** 2 + 2 * a * (1 - a) * ninj).clamp_min(1e-24).sqrt()
        parts.append((a * similarities.gather(1, rows_i) + (1 - a) * similarities.gather(1, rows_j)) / norm)
    if num_mix_query:
        qn = similarities.gather(1, hard_idx.gather(1, draws.index_query_mix))
        beta = draws.beta
        qq = (query * query.detach()).sum(dim=1, keepdim=True)  # 1, with gradient q^
        norm_q = (beta * beta + (1 - beta) ** 2 + 2 * beta * (1 - beta) * qn.detach()).clamp_min(1e-24).sqrt()
        parts.append((beta * qq + (1 - beta) * qn) / norm_q)
    if not parts:
        return similarities.new_zeros(b, 0), hard_sim
    return torch.cat(parts, dim=1), hard_sim
