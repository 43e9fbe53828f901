import numpy as np
import pytest
import torch

from nextword.data.loader import TokenLoader, document_chunks, pack_rows
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


# train.rows = "documents": rows start at documents, packed by best fit.

EOS, BOS = 0, 1


def make_documents(data_dir, lengths, bos_id=None, max_tokens=300):
    """Documents of the given numbers of ids, every id other than EOS and BOS used once (2, 3, 4, ...), so a token
    tells where it is; returns the shards and each document's tokens as written."""
    writer = ShardWriter(data_dir, "train", vocab_size=70000, eos_id=EOS, bos_id=bos_id, max_tokens=max_tokens)
    documents, next_id = [], 2
    for length in lengths:
        ids = list(range(next_id, next_id + length))
        next_id += length
        writer.add(ids, num_bytes=length)
        documents.append(([] if bos_id is None else [bos_id]) + ids + [EOS])
    val = ShardWriter(data_dir, "val", vocab_size=70000, eos_id=EOS, bos_id=bos_id)
    val.add([2, 3, 4], num_bytes=3)
    write_index(data_dir, vocab_size=70000, eos_id=EOS, tokenizer_hash="abc", bos_id=bos_id,
                splits={"train": writer.close(), "val": val.close()})
    return TokenShards(data_dir, "train"), documents


def mixed_lengths(count=120, seed=0, short=14, long=80):
    """Mostly documents shorter than a row (of 17 tokens, by default), some several rows long."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(count) < 0.15, rng.integers(short + 6, long, count), rng.integers(1, short, count))
    return lengths.tolist()


def chunk_firsts(documents, context):
    """The tokens a chunk may begin with: a document's first, and every context-th token of a long one."""
    return {doc[k] for doc in documents for k in range(0, max(1, len(doc) - 1), context)}


def one_epoch(loader):
    rows = [torch.cat(loader.next_batch(), dim=1) for _ in range(loader.num_windows // loader.batch_size)]
    return torch.cat(rows)  # [rows, 2T]: x then y


def test_document_rows_begin_at_a_document_and_so_does_every_chunk_after_an_end(tmp_path):
    shards, documents = make_documents(tmp_path, mixed_lengths())
    loader = TokenLoader(shards, batch_size=1, context=16, seed=2, rows="documents")
    firsts, ends_met = chunk_firsts(documents, 16), 0
    for _ in range(loader.num_windows):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (1, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
        assert int(x[0, 0]) in firsts
        after_an_end = y[0][x[0] == EOS].tolist()
        assert set(after_an_end) <= firsts
        ends_met += len(after_an_end)
    assert ends_met > 50 and loader.state_dict() == {"epoch": 1, "cursor": 0}
    # The windows of today start mostly inside documents.
    windows = TokenLoader(shards, batch_size=1, context=16, seed=2)
    assert sum(int(windows.next_batch()[0][0, 0]) in firsts for _ in range(20)) < 15


def test_document_rows_cover_the_split_but_a_small_cropped_share(tmp_path):
    # Rows of 129 tokens; documents of 2 to 60 tokens and some of 70 to 400 (a crop loses less of a longer row).
    shards, documents = make_documents(tmp_path, mixed_lengths(count=300, short=60, long=400), max_tokens=5000)
    loader = TokenLoader(shards, batch_size=1, context=128, seed=7, rows="documents")
    seen = set(one_epoch(loader).flatten().tolist())
    ids = {token for doc in documents for token in doc} - {EOS}
    missed = ids - seen
    assert 0 < len(missed) < 0.01 * shards.num_tokens  # best fit crops a little, not much


def test_best_fit_takes_the_largest_chunk_that_fits_then_crops_the_smallest_left():
    lengths = np.array([5, 3, 4, 2, 8, 6, 7])
    layout = pack_rows(lengths, np.arange(7), row_length=8)
    rows = [list(zip(layout.chunks[a:b].tolist(), layout.lengths[a:b].tolist()))
            for a, b in zip(layout.first[:-1], layout.first[1:])]
    # 5 + 3; 4 + 2 + the first 2 of chunk 5, the smallest left (its other 4 dropped); chunk 4 alone; chunk 6 is
    # left alone and too short for a row (its 7 dropped).
    assert rows == [[(0, 5), (1, 3)], [(2, 4), (3, 2), (5, 2)], [(4, 8)]]
    assert layout.dropped == 4 + 7


def test_packed_rows_are_full_and_account_for_every_chunk_token():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 34, 5000)
    layout = pack_rows(lengths, rng.permutation(5000), row_length=33)
    assert np.all(np.add.reduceat(layout.lengths, layout.first[:-1]) == 33)
    assert len(set(layout.chunks.tolist())) == len(layout.chunks)  # no chunk twice
    assert np.all(layout.lengths[layout.first[:-1]] == lengths[layout.chunks[layout.first[:-1]]])  # starts whole
    assert layout.lengths.sum() + layout.dropped == lengths.sum()
    assert layout.dropped < 0.01 * lengths.sum()


def test_document_chunks_overlap_by_one_token_and_end_with_their_document():
    starts, lengths = document_chunks(np.array([0, 1, 22, 27]), 60, context=10)
    # Documents of 1, 21, 5 and 33 tokens: a 21-token one is two chunks of 11, a 33-token one four.
    assert starts.tolist() == [0, 1, 11, 22, 27, 37, 47, 57]
    assert lengths.tolist() == [1, 11, 11, 5, 11, 11, 11, 3]


def test_document_rows_resume_exactly(tmp_path):
    shards, _ = make_documents(tmp_path, mixed_lengths())
    uninterrupted = TokenLoader(shards, batch_size=5, context=16, seed=3, rows="documents")
    for _ in range(7):
        uninterrupted.next_batch()
    state = uninterrupted.state_dict()
    expected = [uninterrupted.next_batch() for _ in range(60)]  # runs across epoch ends
    assert uninterrupted.state_dict()["epoch"] >= 2
    restored = TokenLoader(shards, batch_size=5, context=16, seed=3, rows="documents")
    restored.load_state_dict(state)
    for x, y in expected:
        rx, ry = restored.next_batch()
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_document_rows_of_two_ranks_are_the_one_rank_stream_shared_out(tmp_path):
    shards, _ = make_documents(tmp_path, mixed_lengths())
    alone = TokenLoader(shards, batch_size=6, context=16, seed=4, rows="documents")
    ranks = [TokenLoader(shards, batch_size=3, context=16, seed=4, rank=r, world_size=2, rows="documents")
             for r in (0, 1)]
    for _ in range(25):  # across epoch ends
        stream = alone.next_batch()[0]
        mine = [loader.next_batch()[0] for loader in ranks]
        assert torch.equal(mine[0], stream[0::2]) and torch.equal(mine[1], stream[1::2])
        assert not {tuple(row) for row in mine[0].tolist()} & {tuple(row) for row in mine[1].tolist()}


def test_document_rows_in_order_are_the_same_each_time_and_epochs_are_reshuffled(tmp_path):
    shards, _ = make_documents(tmp_path, mixed_lengths())
    in_order = [TokenLoader(shards, batch_size=4, context=16, shuffle=False, rows="documents") for _ in range(2)]
    for _ in range(3):
        assert torch.equal(in_order[0].next_batch()[0], in_order[1].next_batch()[0])
    loader = TokenLoader(shards, batch_size=1, context=16, seed=0, rows="documents")
    first, second = one_epoch(loader), one_epoch(loader)
    assert not torch.equal(first[: len(second)], second[: len(first)])


def test_document_rows_start_with_the_beginning_token_where_the_tokenizer_has_one(tmp_path):
    shards, _ = make_documents(tmp_path, [3, 9, 1, 12, 6] * 10, bos_id=BOS)
    loader = TokenLoader(shards, batch_size=8, context=16, seed=1, rows="documents")
    x, _ = loader.next_batch()
    assert torch.all(x[:, 0] == BOS)


def test_a_split_too_small_for_one_document_row_is_a_data_error(tmp_path):
    shards, _ = make_documents(tmp_path, [4, 5])
    with pytest.raises(DataError, match="2 documents of 11 tokens, but one row needs context \\+ 1 = 17"):
        TokenLoader(shards, batch_size=1, context=16, rows="documents")
