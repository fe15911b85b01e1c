"""Image reading: StackReader (slices, out buffers, NaN check) and BatchStream (read-ahead into
two reused buffers, several reader threads)."""

from __future__ import annotations

import numpy as np
import pytest

from csrefine.errors import InputError
from csrefine.images import StackReader, write_stack
from csrefine.streaming import BatchStream, batch_slices

BOX = 16


@pytest.fixture()
def stacks(tmp_path):
    """Two stacks (7 and 5 images) whose pixels encode (stack, image)."""
    data = {}
    for s, count in ((0, 7), (1, 5)):
        images = np.stack([np.full((BOX, BOX), 100 * s + i, np.float32) for i in range(count)])
        images[:, 0, 0] = np.arange(count)  # not all pixels equal
        path = tmp_path / f"s{s}.mrcs"
        write_stack(path, images, 1.0)
        data[str(path)] = images
    return data


def _reader(stacks, order):
    paths = [p for p, images in stacks.items() for _ in range(len(images))]
    indices = [i for images in stacks.values() for i in range(len(images))]
    paths, indices = np.array(paths, dtype=object)[order], np.array(indices)[order]
    expected = np.stack([stacks[p][i] for p, i in zip(paths, indices)])
    return StackReader(paths, indices, BOX, 1.0), expected


@pytest.mark.parametrize("order", [np.arange(12), np.array([3, 4, 5, 0, 11, 10, 7, 8, 9, 1, 2, 6])])
def test_stack_reader_reads_any_order_into_out(stacks, order):
    reader, expected = _reader(stacks, order)
    positions = np.array([5, 6, 7, 8, 0, 1, 11])
    np.testing.assert_array_equal(reader.read(positions), expected[positions])
    out = np.full((positions.size, BOX, BOX), -1, np.float32)
    assert reader.read(positions, out=out) is out
    np.testing.assert_array_equal(out, expected[positions])
    with pytest.raises(ValueError, match="float32"):
        reader.read(positions, out=np.empty((2, BOX, BOX), np.float32))


def test_stack_reader_names_nan_image(stacks, tmp_path):
    path = next(iter(stacks))
    images = stacks[path].copy()
    images[4, 3, 3] = np.nan
    bad = tmp_path / "bad.mrcs"
    write_stack(bad, images, 1.0)
    reader = StackReader([str(bad)] * 7, np.arange(7), BOX)
    reader.read([0, 1, 2, 3])  # clean images pass
    with pytest.raises(InputError, match=r"bad.mrcs: image 5 contains NaN"):
        reader.read([2, 3, 4])


def test_stack_reader_huge_finite_values_are_not_nan(tmp_path):
    images = np.full((2, BOX, BOX), 3e38, np.float32)  # float32 sum overflows, data are finite
    write_stack(tmp_path / "big.mrcs", images, 1.0)
    reader = StackReader([str(tmp_path / "big.mrcs")] * 2, np.arange(2), BOX)
    np.testing.assert_array_equal(reader.read([0, 1]), images)


def test_batch_slices():
    assert [b.tolist() for b in batch_slices(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batch_slices(0, 3) == []


@pytest.mark.parametrize("readers", [1, 3])
def test_batch_stream_reads_every_batch_in_order(stacks, readers):
    reader, expected = _reader(stacks, np.arange(12)[::-1])
    positions = np.array([0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9])
    made = []

    def buffer(shape):
        made.append(np.empty(shape, np.float32))
        return made[-1]

    seen = []
    for idx, images in BatchStream(reader, positions, 4, BOX, buffer=buffer, readers=readers):
        np.testing.assert_array_equal(images, expected[positions[idx]])
        assert any(np.shares_memory(images, m) for m in made)  # read into the reused buffers
        seen.extend(idx.tolist())
    assert seen == list(range(positions.size))
    assert len(made) == 2


@pytest.mark.parametrize("readers", [1, 3])
def test_batch_stream_measures_each_batch_in_its_readers(stacks, readers):
    reader, expected = _reader(stacks, np.arange(12)[::-1])
    positions = np.array([11, 0, 5, 3, 8, 1, 2])

    def measure(images):
        return images.sum(axis=(1, 2)), images[:, 0, 0].copy()

    seen = 0
    for idx, _, (sums, corner) in BatchStream(reader, positions, 3, BOX, readers=readers,
                                              measure=measure):
        np.testing.assert_array_equal(sums, expected[positions[idx]].sum(axis=(1, 2)))
        np.testing.assert_array_equal(corner, expected[positions[idx]][:, 0, 0])
        seen += idx.size
    assert seen == positions.size


def test_batch_stream_raises_reader_error(stacks, tmp_path):
    path = next(iter(stacks))
    images = stacks[path].copy()
    images[6] = np.inf
    write_stack(tmp_path / "bad.mrcs", images, 1.0)
    reader = StackReader([str(tmp_path / "bad.mrcs")] * 7, np.arange(7), BOX)
    batches = []
    with pytest.raises(InputError, match="image 7"):
        for idx, _ in BatchStream(reader, np.arange(7), 3, BOX, readers=2):
            batches.append(idx)
    assert len(batches) == 2  # the clean batches came first


def test_batch_stream_empty():
    assert list(BatchStream(None, np.array([], int), 4, BOX)) == []


def test_batch_stream_closed_early_stops_its_readers(stacks):
    import threading
    from contextlib import closing

    reader, _ = _reader(stacks, np.arange(12))
    with closing(iter(BatchStream(reader, np.arange(12), 2, BOX, readers=2))) as batches:
        next(batches)  # an abort after the first batch, say
    assert not [t for t in threading.enumerate() if t.name.startswith("csrefine-read")]
