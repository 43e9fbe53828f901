import numpy as np
import pytest
import torch

from nextword.data.loader import TokenLoader
from nextword.data.shards import ShardWriter, TokenShards, write_index
from nextword.errors import DataError


def make_shards(data_dir, num_tokens=1000, max_tokens=400, split="train"):
    """Token ids 1, 2, 3, ... (as documents of 9 ids + EOS 0), so every position is recognisable."""
    splits = {}
    for name in ("train", "val"):
        writer = ShardWriter(data_dir, name, vocab_size=70000, eos_id=0, max_tokens=max_tokens)
        for start in range(1, num_tokens, 10):
            writer.add(list(range(start, start + 9)), num_bytes=9)
        splits[name] = writer.close()
    write_index(data_dir, vocab_size=70000, eos_id=0, tokenizer_hash="abc", splits=splits)
    return TokenShards(data_dir, split)


def test_y_is_x_shifted_by_one_and_windows_stay_in_their_shard(tmp_path):
    shards = make_shards(tmp_path)
    assert len(shards.arrays) == 3
    loader = TokenLoader(shards, batch_size=4, context=16, seed=1)
    x, y = loader.next_batch()
    assert x.dtype == torch.int64 and x.shape == y.shape == (4, 16) and x.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    shard_text = [a.tobytes() for a in shards.arrays]
    for window in torch.cat([x, y[:, -1:]], dim=1).numpy():
        assert any(window.astype("<u4").tobytes() in text for text in shard_text)


def test_one_epoch_in_order_predicts_each_token_once(tmp_path):
    shards = make_shards(tmp_path, max_tokens=10_000)
    loader = TokenLoader(shards, batch_size=1, context=10, shuffle=False)
    assert loader.num_windows == (1000 - 1) // 10  # the last 9 tokens are too few for a window
    targets = torch.cat([loader.next_batch()[1] for _ in range(loader.num_windows)], dim=1)[0]
    assert torch.equal(targets, torch.from_numpy(shards.arrays[0][1:991].astype(np.int64)))
    assert loader.state_dict() == {"epoch": 1, "cursor": 0}


def test_ranks_get_disjoint_windows(tmp_path):
    shards = make_shards(tmp_path)
    seen = []
    for rank in (0, 1):
        loader = TokenLoader(shards, batch_size=3, context=8, rank=rank, world_size=2, seed=5)
        seen.append({tuple(row.tolist()) for _ in range(4) for row in loader.next_batch()[0]})
    assert len(seen[0]) == len(seen[1]) == 12
    assert not seen[0] & seen[1]


def test_restored_loader_continues_exactly(tmp_path):
    shards = make_shards(tmp_path)
    uninterrupted = TokenLoader(shards, batch_size=5, context=8, seed=3)
    for _ in range(7):
        uninterrupted.next_batch()
    state = uninterrupted.state_dict()
    expected = [uninterrupted.next_batch() for _ in range(30)]  # runs across epoch ends
    restored = TokenLoader(shards, batch_size=5, context=8, seed=3)
    restored.load_state_dict(state)
    for x, y in expected:
        rx, ry = restored.next_batch()
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_epochs_are_reshuffled_and_evaluation_order_is_fixed(tmp_path):
    shards = make_shards(tmp_path)
    loader = TokenLoader(shards, batch_size=loader_batch(shards, 8), context=8, seed=0)
    first_epoch, second_epoch = loader.next_batch()[0], loader.next_batch()[0]
    assert not torch.equal(first_epoch, second_epoch)
    assert sorted(map(tuple, first_epoch.tolist())) == sorted(map(tuple, second_epoch.tolist()))
    evals = [TokenLoader(shards, batch_size=4, context=8, shuffle=False).next_batch()[0] for _ in range(2)]
    assert torch.equal(*evals)


def loader_batch(shards, context):
    """A batch size of exactly one epoch."""
    return sum((len(a) - 1) // context for a in shards.arrays)


def test_split_smaller_than_one_window_is_a_data_error(tmp_path):
    shards = make_shards(tmp_path, num_tokens=20)
    assert shards.num_tokens == 20
    with pytest.raises(DataError, match="20 tokens.*context \\+ 1 = 33.*lower model.context"):
        TokenLoader(shards, batch_size=2, context=32)
