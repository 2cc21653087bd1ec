"""A dump's file name is stamped with its capture time as ``datetime.fromtimestamp(captured_ns / 1e9)``
rounds it, to the microsecond: the fleet names the dump's object from the metadata the same way
(fleet.catalog), so the two must agree; the collector formats it without importing datetime."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone

from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.collector.dump import _file_name
from kmemdump.fleet.catalog import _stamp

_NS = st.integers(0, 2**62) | st.builds(
    lambda s, u, d: s * 10**9 + u * 1000 + 500 + d,
    st.integers(0, 2**32),
    st.integers(0, 999_999),
    st.integers(-2, 2),
)


@settings(max_examples=examples(3000), deadline=None)
@given(_NS)
@example(1_764_345_600_999_999_500)  # rounds up into the next second
@example(0)
def test_the_file_name_is_stamped_as_datetime_rounds_it(captured_ns: int) -> None:
    stamp = datetime.fromtimestamp(captured_ns / 1e9, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    assert _file_name(7, 9, "hang", captured_ns) == f"kmemdump-7-9-hang-{stamp}.core"
    assert _stamp(captured_ns).strftime("%Y%m%dT%H%M%S.%fZ") == stamp
