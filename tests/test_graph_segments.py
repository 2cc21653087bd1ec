"""What a graph walk stores: the ranges it read, merged into segments that hold the memory's own bytes.

:meth:`kmemdump.collector.graphs.LiveReader.segments` is checked against the memory it read, for any
order of reads (repeated, overlapping, touching, a few bytes apart, far apart) and any byte limit.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.collector.graphs import LiveReader

BASE = 0x7F00_0000_0000
SIZE = 6 * 4096
MEMORY = random.Random(11).randbytes(SIZE)


class FakeProcess:
    """Memory that reads like a process's: ``read_upto`` gives what lies inside the mapping."""

    pid = 0

    def read_upto(self, address: int, size: int) -> bytes:
        start = max(address - BASE, 0)
        return MEMORY[start : max(address + size - BASE, 0)] if address >= BASE else b""


SIZES = [1, 2, 4, 8, 8, 8, 16, 24, 40, 100, 5000, 70_000]
reads = st.lists(
    st.tuples(st.integers(0, SIZE - 1), st.sampled_from(SIZES)).map(
        lambda read: (read[0], min(read[1], SIZE - read[0]))  # (offset, size) inside the memory
    ),
    max_size=200,
)


@settings(max_examples=examples(300), deadline=None)
@given(reads=reads, limit=st.one_of(st.just(1 << 30), st.integers(0, 3 * SIZE)))
def test_segments_hold_the_bytes_that_were_read(reads: list[tuple[int, int]], limit: int) -> None:
    reader = LiveReader(FakeProcess())  # type: ignore[arg-type]
    for offset, size in reads:
        reader.read(BASE + offset, size)
    segments = reader.segments(limit)
    # sorted, apart, within the limit, and each byte the memory's own
    assert sum(len(data) for _, data in segments) <= limit
    for (address, data), (after, _) in itertools.pairwise(segments):
        assert address + len(data) < after
    for address, data in segments:
        assert data and data == MEMORY[address - BASE : address - BASE + len(data)]
    if limit == 1 << 30:  # room for all: every range read is in one segment
        for offset, size in reads:
            assert any(a <= BASE + offset and BASE + offset + size <= a + len(d) for a, d in segments)
