import numpy as np
import pytest

from nextword.data.shards import ShardWriter, TokenShards, token_dtype, write_index
from nextword.data.split import split_of
from nextword.errors import DataError

EOS = 0


def write_split(data_dir, split, docs, vocab_size=500, max_tokens=1000):
    writer = ShardWriter(data_dir, split, vocab_size=vocab_size, eos_id=EOS, max_tokens=max_tokens)
    for ids in docs:
        writer.add(ids, num_bytes=2 * len(ids))
    return writer.close()


def make_data_dir(data_dir, train_docs, val_docs, vocab_size=500, max_tokens=1000):
    splits = {"train": write_split(data_dir, "train", train_docs, vocab_size, max_tokens),
              "val": write_split(data_dir, "val", val_docs, vocab_size, max_tokens)}
    write_index(data_dir, vocab_size=vocab_size, eos_id=EOS, tokenizer_hash="abc", splits=splits)


def test_shards_read_back_exactly_with_eos_after_each_document(tmp_path):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(1, 500, size=n)) for n in (5, 0, 300, 17, 700, 40)]
    make_data_dir(tmp_path, docs, [[7, 8, 9]], max_tokens=1000)
    shards = TokenShards(tmp_path, "train")
    assert len(shards.arrays) == 2  # 5+0+300+17 (+4 EOS) fits; the 701-token document opens shard two
    assert all(a.dtype == np.dtype("<u2") for a in shards.arrays)
    expected = np.concatenate([np.append(np.asarray(d, dtype=np.int64), EOS) for d in docs])
    assert np.array_equal(np.concatenate(shards.arrays), expected)
    assert shards.num_tokens == len(expected) and shards.documents == len(docs)
    assert shards.num_bytes == 2 * sum(len(d) for d in docs)
    assert [list(s) for s in shards.doc_starts] == [[0, 6, 7, 308], [0, 701]]
    val = TokenShards(tmp_path, "val")
    assert list(val.arrays[0]) == [7, 8, 9, EOS] and val.tokenizer_hash == "abc"
    assert not list(tmp_path.glob("*.tmp"))


def test_uint32_when_the_vocabulary_does_not_fit_uint16(tmp_path):
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    big = [[70000, 100000, 65536], [1, 2]]
    make_data_dir(tmp_path, big, [[3]], vocab_size=128256)
    shards = TokenShards(tmp_path, "train")
    assert shards.arrays[0].dtype == np.dtype("<u4")
    assert list(shards.arrays[0]) == [70000, 100000, 65536, EOS, 1, 2, EOS]
    assert (tmp_path / "train_00000.bin").stat().st_size == 7 * 4


def test_ids_outside_the_vocabulary_are_refused(tmp_path):
    writer = ShardWriter(tmp_path, "train", vocab_size=300, eos_id=EOS)
    with pytest.raises(DataError, match="outside the vocabulary"):
        writer.add([1, 300], num_bytes=2)


def test_damaged_or_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no shard index"):
        TokenShards(tmp_path, "train")
    make_data_dir(tmp_path, [[1, 2, 3]], [[4]])
    shard = tmp_path / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="train_00000.bin"):
        TokenShards(tmp_path, "train")
    (tmp_path / "val_00000.bin").unlink()
    with pytest.raises(DataError, match="val_00000.bin: shard file is missing"):
        TokenShards(tmp_path, "val")
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(DataError, match="index.json: unreadable"):
        TokenShards(tmp_path, "val")


def test_split_is_stable_and_independent_of_order():
    ids = [f"docs/file_{i}.txt" for i in range(2000)]
    first = {i: split_of(i, 0.1) for i in ids}
    again = {i: split_of(i, 0.1) for i in reversed(ids)}
    assert first == again
    val_share = sum(s == "val" for s in first.values()) / len(ids)
    assert 0.07 < val_share < 0.13
