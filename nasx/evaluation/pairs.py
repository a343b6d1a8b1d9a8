"""1:1 verification pairs sampled within one labelled image set (CMP-NAS's face search reward) [nasx]."""
from __future__ import annotations

import torch
from torch import Tensor

from nasx.errors import MetricError

ENUMERATE_PAIRS = 1 << 22  # impostor pairs are enumerated up to this many candidates, sampled beyond


def _sample(n: int, k: int, g: torch.Generator) -> Tensor:
    """k of range(n) without replacement, seeded, ascending."""
    return torch.randperm(n, generator=g)[:k].sort().values


def verification_pairs(labels: Tensor, max_genuine: int, max_impostor: int, seed: int) -> tuple[Tensor, Tensor]:
    """1:1 pairs within one image set [nasx]: (pairs (P, 2) int64 indices into labels, genuine (P,) int64 1/0).

    Genuine: every pair i < j of the same label, identities taken in a seeded order until ``max_genuine`` pairs
    (the last identity's pairs cut) — by identity, so a cap bounds the images the reward needs. Impostor: pairs
    i < j of different labels among the images those genuine pairs use: all of them, or a seeded sample of
    ``max_impostor``. Genuine pairs come first. Raises MetricError when no label has two images.
    """
    g = torch.Generator().manual_seed(seed)
    sorted_labels, order = labels.sort(stable=True)
    counts = torch.unique_consecutive(sorted_labels, return_counts=True)[1]
    starts = torch.cumsum(counts, 0) - counts
    genuine, total = [], 0
    for c in torch.randperm(len(counts), generator=g).tolist():
        if total >= max_genuine:
            break
        if counts[c] >= 2:
            members = order[starts[c]:starts[c] + counts[c]].sort().values
            genuine.append(torch.combinations(members, 2))
            total += len(genuine[-1])
    if not genuine:
        raise MetricError(f"no two images share an identity among the {len(labels)} search-reward images: no "
                          f"genuine pair (raise data.carve_fraction)")
    gen = torch.cat(genuine)[:max_genuine]
    used = torch.unique(gen)
    lu, n = labels[used], len(used)
    if n * (n - 1) // 2 <= ENUMERATE_PAIRS:
        i, j = torch.triu_indices(n, n, 1)
        keep = lu[i] != lu[j]
        imp = torch.stack([i[keep], j[keep]], 1)
        if len(imp) > max_impostor:
            imp = imp[_sample(len(imp), max_impostor, g)]
    else:  # rejection sampling of distinct unordered pairs, then a seeded subset
        keys = torch.empty(0, dtype=torch.long)
        for _ in range(1000):
            a, b = torch.randint(0, n, (2, max_impostor), generator=g)
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
            ok = lu[lo] != lu[hi]
            keys = torch.unique(torch.cat([keys, lo[ok] * n + hi[ok]]))
            if len(keys) >= max_impostor:
                break
        keys = keys[_sample(len(keys), min(max_impostor, len(keys)), g)]
        imp = torch.stack([keys // n, keys % n], 1)
    if len(imp) == 0:
        raise MetricError(f"the {n} search-reward images of genuine pairs all share one identity: no impostor pair")
    pairs = torch.cat([gen, used[imp]])
    return pairs, torch.cat([torch.ones(len(gen), dtype=torch.long), torch.zeros(len(imp), dtype=torch.long)])
