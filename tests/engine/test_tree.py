import torch

from engine.tree import Tree, tree_mask, walk


def _small_tree():
    #        0
    #      /   \
    #     1(a)  2(b)
    #    / \      \
    #  3(c) 4(d)  5(c)
    t = Tree.with_root(9, 6, "cpu")
    t.add(torch.tensor([0, 0]), torch.tensor([10, 11]))
    t.add(torch.tensor([1, 1, 2]), torch.tensor([12, 13, 12]))
    return t


def test_tree_tensors():
    t = _small_tree()
    assert t.size == 6
    assert t.depths.tolist() == [0, 1, 1, 2, 2, 2]
    assert t.parents.tolist() == [-1, 0, 0, 1, 1, 2]
    assert t.ancestors[5].nonzero().flatten().tolist() == [0, 2, 5]
    assert t.ancestors[4].nonzero().flatten().tolist() == [0, 1, 4]


def test_mask_sees_prefix_and_ancestors_only():
    t = _small_tree()
    m = tree_mask(t.ancestors, slice(3, 6), committed=4, visible_nodes=6)
    assert m.shape == (3, 10)
    visible = (m == 0).int().tolist()
    assert visible[0] == [1, 1, 1, 1] + [1, 1, 0, 1, 0, 0]  # node 3 -> 0, 1, 3
    assert visible[2] == [1, 1, 1, 1] + [1, 0, 1, 0, 0, 1]  # node 5 -> 0, 2, 5
    assert (m[m != 0] == torch.finfo(torch.float32).min).all()


def test_mask_in_the_models_dtype_hides_the_same_keys_with_its_own_minimum():
    t = _small_tree()
    reference = tree_mask(t.ancestors, slice(0, 6), committed=4, visible_nodes=6)
    for dtype in (torch.bfloat16, torch.float16):
        m = tree_mask(t.ancestors, slice(0, 6), committed=4, visible_nodes=6, dtype=dtype)
        assert m.dtype == dtype and torch.equal(m == 0, reference == 0)
        assert (m[m != 0] == torch.finfo(dtype).min).all()  # finite: never -inf
        assert (m == 0).any(dim=-1).all()  # every node sees itself at least: no row is all hidden
    windowed = tree_mask(t.ancestors, slice(0, 6), 4, 6, torch.bfloat16, t.depths, sliding_window=3)
    assert (windowed == 0).int().tolist()[3] == [0, 0, 0, 0] + [1, 1, 0, 1, 0, 0]  # at position 6: keys 4..6
    assert (windowed == 0).any(dim=-1).all()


def test_walk_accepts_while_child_then_bonus():
    t = _small_tree()
    tokens, parents = t.tokens.tolist(), t.parents.tolist()
    # target says: after root -> 11 (node 2), after node 2 -> 12 (node 5), after node 5 -> 42 (bonus)
    chosen = [11, 0, 12, 0, 0, 42]
    assert walk(tokens, parents, chosen) == ([2, 5], 42)
    # first token already mismatches: nothing accepted, the target's token is the bonus
    assert walk(tokens, parents, [77, 0, 0, 0, 0, 0]) == ([], 77)
    # a leaf: the target's token there is the bonus
    assert walk(tokens, parents, [10, 13, 0, 0, 5, 0]) == ([1, 4], 5)


def test_prune_keeps_the_most_likely_nodes_with_their_ancestors():
    t = Tree.with_root(9, 8, "cpu")
    t.add(torch.tensor([0, 0]), torch.tensor([10, 11]), torch.tensor([-0.1, -2.0]))
    t.add(torch.tensor([1, 1, 2]), torch.tensor([12, 13, 14]), torch.tensor([-0.1, -0.5, -2.5]))
    t.add(torch.tensor([3]), torch.tensor([15]), torch.tensor([-0.1]))  # ties with its parent and grandparent
    from engine.tree import prune

    p = prune(t, 4)
    assert p.size == 4
    assert p.tokens.tolist() == [9, 10, 12, 15]  # root, then the -0.1 chain: ties go to the shallower node
    assert p.parents.tolist() == [-1, 0, 1, 2]
    assert p.depths.tolist() == [0, 1, 2, 3]
    assert p.ancestors.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    q = prune(t, 5)
    assert q.tokens.tolist() == [9, 10, 12, 13, 15] and q.parents.tolist() == [-1, 0, 1, 1, 2]
    assert prune(t, 100) is t
