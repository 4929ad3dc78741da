"""The C dataloader (llmc/dataloader.h) through llmc._llmc.DataLoader.

Shards hold distinct token values (a global arange), so every batch tells where it came from:
its first token is the offset of its sample in the concatenated data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from llmc._llmc import DataLoader
from llmc.formats import write_shard

SHARD_MAGIC = 20240520
B, T = 2, 8
BT = B * T


def write_raw_shard(path: Path, header: list[int], tokens: np.ndarray | bytes = b"") -> None:
    """A shard file with an arbitrary header (256 int32, the first entries given) and body."""
    words = np.zeros(256, dtype="<i4")
    words[: len(header)] = header
    body = tokens if isinstance(tokens, bytes) else np.asarray(tokens, dtype="<u2").tobytes()
    path.write_bytes(words.tobytes() + body)


def make_shards(directory: Path, sizes: list[int], prefix: str = "shard") -> list[np.ndarray]:
    """Writes shards prefix_000.bin, ... holding consecutive ranges of one global arange; the
    files are created in reverse order so that the loader's sorting is what puts them in order."""
    starts = np.cumsum([0, *sizes])
    data = [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
    for i in reversed(range(len(sizes))):
        write_shard(directory / f"{prefix}_{i:03d}.bin", data[i])
    return data


def sample_starts(shard: np.ndarray) -> list[int]:
    """First token of every sample of B*T (+1) tokens in a shard."""
    count = (len(shard) - 1) // BT
    return [int(shard[s * BT]) for s in range(count)]


def read_epoch(loader: DataLoader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [loader.next_batch() for _ in range(loader.batches_per_epoch)]


# ---------------------------------------------------------------------------------------------
# batches, shards, epochs


def test_glob_sorted_and_batches_follow_the_data(tmp_path: Path) -> None:
    data = make_shards(tmp_path, [100, 70, 130])
    loader = DataLoader(str(tmp_path / "shard_*.bin"), B, T)
    assert loader.shard_paths == [str(tmp_path / f"shard_{i:03d}.bin") for i in range(3)]
    assert loader.num_shards == 3
    assert loader.num_tokens == 300
    assert list(loader.shard_num_tokens) == [100, 70, 130]
    assert (loader.B, loader.T) == (B, T)
    expected = []
    for shard in data:
        for s in range((len(shard) - 1) // BT):
            expected.append(shard[s * BT : s * BT + BT + 1])
    assert loader.batches_per_epoch == len(expected)
    for chunk in expected:
        x, y = loader.next_batch()
        assert x.dtype == np.int32 and y.dtype == np.int32
        assert x.shape == (B, T) and y.shape == (B, T)
        np.testing.assert_array_equal(x.ravel(), chunk[:-1])
        np.testing.assert_array_equal(y.ravel(), chunk[1:])


def test_targets_are_inputs_shifted_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "a.bin", rng.integers(0, 50257, size=1000))
    loader = DataLoader(str(tmp_path / "a.bin"), 4, 16, shuffle=True, seed=5)
    tokens = np.fromfile(tmp_path / "a.bin", dtype="<u2", offset=1024)
    for _ in range(20):
        x, y = loader.next_batch()
        np.testing.assert_array_equal(x.ravel()[1:], y.ravel()[:-1])
        # the batch is B*T+1 consecutive tokens of the shard
        starts = np.flatnonzero(tokens[: len(tokens) - 64] == x.ravel()[0])
        assert any(
            np.array_equal(tokens[s : s + 65], np.append(x.ravel(), y.ravel()[-1])) for s in starts
        )


def test_epochs_wrap_to_the_first_shard(tmp_path: Path) -> None:
    make_shards(tmp_path, [50, 60])
    loader = DataLoader(str(tmp_path / "*.bin"), B, T)
    first = read_epoch(loader)
    assert loader.epoch == 0
    second = read_epoch(loader)
    assert loader.epoch == 1
    assert loader.position[0] == 2 * loader.num_shards - 1
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    loader.reset()
    assert loader.position == (0, 0)
    np.testing.assert_array_equal(loader.next_batch()[0], first[0][0])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_get_disjoint_batches_covering_each_shard(
    tmp_path: Path, world: int, shuffle: bool
) -> None:
    data = make_shards(tmp_path, [200, 137, 300])
    per_rank: list[list[list[int]]] = []  # rank -> shard in epoch order -> sample starts
    shard_of_start = {start: i for i, shard in enumerate(data) for start in sample_starts(shard)}
    for rank in range(world):
        loader = DataLoader(str(tmp_path / "*.bin"), B, T, rank, world, shuffle, seed=7)
        starts: list[list[int]] = [[] for _ in data]
        order: list[int] = []
        for x, _ in read_epoch(loader):
            shard_id = shard_of_start[int(x.ravel()[0])]
            if not order or order[-1] != shard_id:
                order.append(shard_id)
            starts[shard_id].append(int(x.ravel()[0]))
        assert sorted(order) == list(range(len(data))), "each shard visited once per epoch"
        per_rank.append(starts)
    for i, shard in enumerate(data):
        all_samples = sample_starts(shard)
        per_rank_count = len(all_samples) // world
        taken = [s for rank in range(world) for s in per_rank[rank][i]]
        assert all(len(per_rank[rank][i]) == per_rank_count for rank in range(world))
        assert len(set(taken)) == len(taken), "ranks must not share a sample"
        assert set(taken) <= set(all_samples)
        if not shuffle:
            # rank r takes samples r, r+N, r+2N, ...: the first per_rank_count * N samples
            for rank in range(world):
                assert per_rank[rank][i] == all_samples[rank : per_rank_count * world : world]
        # every sample but the remainder (< N) is used
        assert len(taken) == per_rank_count * world
        assert len(all_samples) - len(taken) < world


def test_shuffle_is_a_deterministic_permutation(tmp_path: Path) -> None:
    make_shards(tmp_path, [300, 300, 300, 300, 300, 300])
    pattern = str(tmp_path / "*.bin")

    def stream(seed: int, epochs: int = 2) -> list[int]:
        loader = DataLoader(pattern, B, T, shuffle=True, seed=seed)
        return [int(loader.next_batch()[0].ravel()[0]) for _ in range(epochs * 6 * 18)]

    plain_loader = DataLoader(pattern, B, T)
    plain = [int(x.ravel()[0]) for x, _ in read_epoch(plain_loader)]
    a, a_again, b = stream(1), stream(1), stream(2)
    epoch_length = len(plain)
    assert a == a_again
    assert a != b
    for s in (a, b):
        assert sorted(s[:epoch_length]) == sorted(plain), "an epoch is a permutation"
        assert sorted(s[epoch_length:]) == sorted(plain)
        assert s[:epoch_length] != plain
        assert s[:epoch_length] != s[epoch_length:], "each epoch has its own order"
    # the shard order is shuffled too: over a few seeds the first shard is not always shard 0
    first_shards = {stream(seed, epochs=1)[0] // 300 for seed in range(8)}
    assert len(first_shards) > 1


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_reproduces_the_stream(tmp_path: Path, shuffle: bool) -> None:
    make_shards(tmp_path, [100, 150, 90])
    pattern = str(tmp_path / "*.bin")
    loader = DataLoader(pattern, B, T, 1, 2, shuffle, seed=11)
    epoch = loader.batches_per_epoch
    for cut in (0, 1, 3, epoch - 1, epoch, epoch + 2, 3 * epoch + 1):
        loader.reset()
        for _ in range(cut):
            loader.next_batch()
        position = loader.position
        expected = [loader.next_batch() for _ in range(epoch + 3)]
        fresh = DataLoader(pattern, B, T, 1, 2, shuffle, seed=11)
        fresh.resume(*position)
        assert fresh.position == position
        for x, y in expected:
            fx, fy = fresh.next_batch()
            np.testing.assert_array_equal(fx, x)
            np.testing.assert_array_equal(fy, y)


def test_resume_rejects_a_sample_past_the_shard(tmp_path: Path) -> None:
    make_shards(tmp_path, [100])
    loader = DataLoader(str(tmp_path / "*.bin"), B, T)
    with pytest.raises(ValueError, match=r"shard_000\.bin"):
        loader.resume(0, loader.batches_per_epoch + 1)
    assert loader.position == (0, 0)


def test_vocab_check(tmp_path: Path) -> None:
    tokens = np.arange(200) % 50
    tokens[150] = 60000
    write_shard(tmp_path / "ok.bin", np.arange(100) % 50)
    write_shard(tmp_path / "zbad.bin", tokens)
    loader = DataLoader(str(tmp_path / "*.bin"), B, T)
    loader.check_vocab(65535)
    with pytest.raises(ValueError, match=r"zbad\.bin: token 150 has id 60000"):
        loader.check_vocab(50257)
    with pytest.raises(RuntimeError, match=r"zbad\.bin: .*60000"):  # and batches are checked
        for _ in range(loader.batches_per_epoch):
            loader.next_batch()
    # lazily, per batch
    lazy = DataLoader(str(tmp_path / "*.bin"), B, T)
    lazy.set_vocab_limit(50257)
    with pytest.raises(RuntimeError, match=r"zbad\.bin: .*60000"):
        for _ in range(lazy.batches_per_epoch):
            lazy.next_batch()


# ---------------------------------------------------------------------------------------------
# bad input


def bad_shard_cases(path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file contents, expected part of the message)."""
    good_header = np.zeros(256, dtype="<i4")
    good_header[:3] = [SHARD_MAGIC, 1, 100]
    body = np.arange(100, dtype="<u2").tobytes()

    def header(*words: int) -> bytes:
        h = np.zeros(256, dtype="<i4")
        h[: len(words)] = words
        return h.tobytes()

    return {
        "wrong magic": (header(12345, 1, 100) + body, "bad magic 12345"),
        "wrong version": (header(SHARD_MAGIC, 7, 100) + body, "version 7"),
        "truncated header": (good_header.tobytes()[:100], "truncated header"),
        "truncated body": (good_header.tobytes() + body[:-10], "truncated"),
        "extra bytes": (good_header.tobytes() + body + b"\x00\x00", "extra bytes"),
        "empty": (header(SHARD_MAGIC, 1, 0), "empty"),
        "negative count": (header(SHARD_MAGIC, 1, -5), "empty"),
        "zero-length file": (b"", "truncated header"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong magic",
        "wrong version",
        "truncated header",
        "truncated body",
        "extra bytes",
        "empty",
        "negative count",
        "zero-length file",
    ],
)
def test_bad_shard_is_named(tmp_path: Path, case: str) -> None:
    make_shards(tmp_path, [100, 100])  # good shards around the bad one
    bad = tmp_path / "shard_001_bad.bin"
    contents, message = bad_shard_cases(bad)[case]
    bad.write_bytes(contents)
    with pytest.raises(ValueError, match=r"shard_001_bad\.bin") as info:
        DataLoader(str(tmp_path / "*.bin"), B, T)
    assert message in str(info.value)


def test_shard_too_small_for_a_batch(tmp_path: Path) -> None:
    write_shard(tmp_path / "tiny.bin", np.arange(BT))  # B*T tokens: one short of a sample
    with pytest.raises(ValueError, match=r"tiny\.bin: too small .*16 tokens"):
        DataLoader(str(tmp_path / "tiny.bin"), B, T)
    write_shard(tmp_path / "two.bin", np.arange(2 * BT + 1))  # two samples
    DataLoader(str(tmp_path / "two.bin"), B, T, 1, 2)
    with pytest.raises(ValueError, match=r"two\.bin: too small .*3 process"):
        DataLoader(str(tmp_path / "two.bin"), B, T, 0, 3)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no token shard matches"):
        DataLoader(str(tmp_path / "missing_*.bin"), B, T)
    with pytest.raises(ValueError, match=r"nothing\.bin"):
        DataLoader(str(tmp_path / "nothing.bin"), B, T)
    os.mkdir(tmp_path / "dir.bin")
    with pytest.raises(ValueError, match=r"dir\.bin"):
        DataLoader(str(tmp_path / "dir.bin"), B, T)


def test_bad_arguments(tmp_path: Path) -> None:
    make_shards(tmp_path, [100])
    pattern = str(tmp_path / "*.bin")
    for b, t in ((0, 8), (2, 0), (-1, 8)):
        with pytest.raises(ValueError, match="must be positive"):
            DataLoader(pattern, b, t)
    for rank, world in ((1, 1), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="process rank"):
            DataLoader(pattern, B, T, rank, world)


def test_shard_deleted_after_init(tmp_path: Path) -> None:
    make_shards(tmp_path, [100, 100])
    loader = DataLoader(str(tmp_path / "*.bin"), B, T)
    (tmp_path / "shard_001.bin").unlink()
    with pytest.raises(RuntimeError, match=r"shard_001\.bin"):
        for _ in range(loader.batches_per_epoch):
            loader.next_batch()
