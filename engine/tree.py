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
    scores: torch.Tensor  # [N] float32: cumulative draft log-probability (root 0)
    size: int  # nodes filled so far

    @classmethod
    def with_root(cls, root_token: int | torch.Tensor, capacity: int, device) -> "Tree":
        tokens = torch.zeros(capacity, dtype=torch.long, device=device)
        tokens[0] = root_token
        parents = torch.full((capacity,), -1, dtype=torch.long, device=device)
        depths = torch.zeros(capacity, dtype=torch.long, device=device)
        ancestors = torch.zeros(capacity, capacity, dtype=torch.bool, device=device)
        ancestors[0, 0] = True
        scores = torch.zeros(capacity, dtype=torch.float32, device=device)
        return cls(tokens, parents, depths, ancestors, scores, 1)

    def add(self, parents: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor | None = None) -> slice:
        """Append children (one per entry) of existing nodes; returns their index range."""
        n = parents.numel()
        new = slice(self.size, self.size + n)
        self.tokens[new] = tokens
        self.parents[new] = parents
        if scores is not None:
            self.scores[new] = scores
        self.depths[new] = self.depths[parents] + 1
        idx = torch.arange(self.size, self.size + n, device=self.tokens.device)
        self.ancestors[idx] = self.ancestors[parents]
        self.ancestors[idx, idx] = True
        self.size += n
        return new


def prune(tree: Tree, budget: int) -> Tree:
    """The `budget` nodes with the highest cumulative draft log-probability, as a tree of their own.

    A child never scores above its parent, and ties go to the shallower node, so the kept set contains
    every kept node's ancestors. Kept nodes stay in their order (parents before children)."""
    n = tree.size
    if budget >= n:
        return tree
    by_depth = torch.sort(tree.depths[:n], stable=True).indices
    order = by_depth[torch.sort(tree.scores[:n][by_depth], descending=True, stable=True).indices]
    keep = torch.sort(order[:budget]).values
    new_index = torch.full((n + 1,), -1, dtype=torch.long, device=keep.device)  # slot n maps the root's -1
    new_index[keep] = torch.arange(budget, device=keep.device)
    parents = tree.parents[keep]
    return Tree(tokens=tree.tokens[keep].clone(), parents=new_index[torch.where(parents < 0, n, parents)],
                depths=tree.depths[keep].clone(), ancestors=tree.ancestors[keep][:, keep],
                scores=tree.scores[keep].clone(), size=budget)


def tree_mask(ancestors: torch.Tensor, rows: slice, committed: int, visible_nodes: int,
              dtype: torch.dtype = torch.float32, depths: torch.Tensor | None = None,
              sliding_window: int | None = None) -> torch.Tensor:
    """Additive mask [len(rows), committed + visible_nodes] for the nodes `rows` attending to the committed
    prefix (all visible) and to tree nodes [0, visible_nodes) (visible when an ancestor or self).

    With a sliding window (and the tree's `depths`), keys more than `sliding_window - 1` positions behind
    a node are hidden too, as in causal attention.

    Pass the model's dtype: the caller holds the mask through the whole forward, beside its fold, and it
    grows with the context (a float32 one would be twice a bf16 one). Built in place, zeros then the
    hidden entries: the prefix is visible to every node, so only the tree's columns need the ancestor test,
    and no boolean matrix as wide as the context is made (one is, for a sliding window). Every row sees at
    least itself, so no row is all hidden."""
    hidden = torch.finfo(dtype).min
    mask = torch.zeros(rows.stop - rows.start, committed + visible_nodes, dtype=dtype, device=ancestors.device)
    mask[:, committed:].masked_fill_(~ancestors[rows, :visible_nodes], hidden)
    if sliding_window is not None:
        q = committed + depths[rows][:, None]
        k = torch.cat((torch.arange(committed, device=depths.device), committed + depths[:visible_nodes]))
        mask.masked_fill_(k[None, :] <= q - sliding_window, hidden)
    return mask


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


def path_members(tree: Tree, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each node of `rows` adds to the answer's context, for penalties (engine.sampling.History):
    its path below the root, itself included, as (member [R, size] bool, tokens [size], depths [size]).
    The root is the last emitted token: the answer's history already holds it."""
    member = tree.ancestors[rows, :tree.size].clone()
    member[:, 0] = False
    return member, tree.tokens[:tree.size], tree.depths[:tree.size]
