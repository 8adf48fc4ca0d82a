import torch

from engine.kv_cache import KVCache


def _filled(capacity=10):
    c = KVCache(num_layers=2, num_kv_heads=1, head_dim=2, capacity=capacity, dtype=torch.float32)
    for layer in range(2):
        rows = torch.arange(capacity, dtype=torch.float32).view(1, 1, capacity, 1).expand(1, 1, capacity, 2)
        c.write(layer, 0, rows + 100 * layer, -rows)
    return c


def test_compact_moves_accepted_rows_after_committed_length_in_all_layers():
    c = _filled()
    c.commit(3)
    c.compact(torch.tensor([5, 8, 9]))  # an accepted path among scratch rows
    assert c.length == 6
    for layer in range(2):
        assert c.k[layer, 0, 0, :6, 0].tolist() == [v + 100 * layer for v in [0, 1, 2, 5, 8, 9]]
        assert c.v[layer, 0, 0, :6, 0].tolist() == [0, -1, -2, -5, -8, -9]


def test_compact_handles_overlapping_source_and_destination():
    c = _filled()
    c.commit(2)
    c.compact(torch.tensor([3, 2]))  # destination slots 2, 3 are also sources
    assert c.k[0, 0, 0, :4, 0].tolist() == [0, 1, 3, 2]


def test_commit_and_rollback_by_length():
    c = _filled()
    c.commit(7)
    c.commit(4)
    assert c.length == 4
    k, v = c.view(0, c.length)
    assert k.shape[2] == 4
    try:
        c.commit(11)
    except ValueError:
        pass
    else:
        raise AssertionError("commit past capacity must fail")


def test_write_past_capacity_fails_and_growth_keeps_committed_rows():
    c = _filled(4)
    c.commit(4)
    try:
        c.write(0, 3, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    except IndexError:
        pass
    else:
        raise AssertionError("write past capacity must fail")
    c.ensure_capacity(9)
    assert c.capacity >= 9
    assert c.k[1, 0, 0, :4, 0].tolist() == [100, 101, 102, 103]
