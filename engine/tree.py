"""The draft tree as plain tensors built by pure functions: tokens, parents, depths, ancestor matrix.

Node 0 is the root (the last emitted token, which has no KV yet); node i lives in KV slot
`committed + i` and sits at rotary position `committed + depth[i]`. A node sees the committed prefix and
its own ancestors (itself included), nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tree:
    tokens: torch.Tensor  # [N] int64
    parents: torch.Tensor  # [N] int64, -1 for the root
    depths: torch.Tensor  # [N] int64
    ancestors: torch.Tensor  # [N, N] bool: ancestors[i, j] = j is i or an ancestor of i
    size: int  # nodes filled so far

    @classmethod
    def with_root(cls, root_token: int | torch.Tensor, capacity: int, device) -> "Tree":
        tokens = torch.zeros(capacity, dtype=torch.long, device=device)
        tokens[0] = root_token
        parents = torch.full((capacity,), -1, dtype=torch.long, device=device)
        depths = torch.zeros(capacity, dtype=torch.long, device=device)
        ancestors = torch.zeros(capacity, capacity, dtype=torch.bool, device=device)
        ancestors[0, 0] = True
        return cls(tokens, parents, depths, ancestors, 1)

    def add(self, parents: torch.Tensor, tokens: torch.Tensor) -> slice:
        """Append children (one per entry) of existing nodes; returns their index range."""
        n = parents.numel()
        new = slice(self.size, self.size + n)
        self.tokens[new] = tokens
        self.parents[new] = parents
        self.depths[new] = self.depths[parents] + 1
        idx = torch.arange(self.size, self.size + n, device=self.tokens.device)
        self.ancestors[idx] = self.ancestors[parents]
        self.ancestors[idx, idx] = True
        self.size += n
        return new


def tree_mask(ancestors: torch.Tensor, rows: slice, committed: int, visible_nodes: int,
              dtype: torch.dtype = torch.float32, depths: torch.Tensor | None = None,
              sliding_window: int | None = None) -> torch.Tensor:
    """Additive mask [len(rows), committed + visible_nodes] for the nodes `rows` attending to the committed
    prefix (all visible) and to tree nodes [0, visible_nodes) (visible when an ancestor or self).

    With a sliding window (and the tree's `depths`), keys more than `sliding_window - 1` positions behind
    a node are hidden too, as in causal attention."""
    visible = torch.ones(rows.stop - rows.start, committed + visible_nodes, dtype=torch.bool,
                         device=ancestors.device)
    visible[:, committed:] = ancestors[rows, :visible_nodes]
    if sliding_window is not None:
        q = committed + depths[rows][:, None]
        k = torch.cat((torch.arange(committed, device=depths.device), committed + depths[:visible_nodes]))
        visible &= k[None, :] > q - sliding_window
    mask = torch.zeros(visible.shape, dtype=dtype, device=ancestors.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)


def positions(depths: torch.Tensor, committed: int) -> torch.Tensor:
    return depths + committed


def walk(tokens: list[int], parents: list[int], target_tokens: list[int]) -> tuple[list[int], int]:
    """The verification walk: from the root, follow the target's token while it is a child.

    Returns (accepted node indices after the root, bonus token). The bonus is the target's token at the
    last accepted node: the first mismatch, or what the target says after a leaf."""
    children: dict[tuple[int, int], int] = {}
    for i in range(1, len(tokens)):
        children[(parents[i], tokens[i])] = i
    path = []
    node = 0
    while (child := children.get((node, target_tokens[node]))) is not None:
        path.append(child)
        node = child
    return path, target_tokens[node]
