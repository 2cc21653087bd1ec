"""The formats' numbers are plain ints where they are read (kmemdump.formats.kinds, .table,
kmemdump.ids) and enums where they are named (kmemdump.formats.enums, kmemdump.idenum): the two agree,
the public names are the enums, and a reader that only passes the numbers on loads no ``enum``."""

from __future__ import annotations

import subprocess
import sys

from kmemdump import ids
from kmemdump.formats import kinds
from kmemdump.formats import table


def test_the_enums_and_the_numbers_agree() -> None:
    from kmemdump.formats.enums import RegionFlags
    from kmemdump.formats.enums import RegionKind
    from kmemdump.formats.enums import TableState
    from kmemdump.idenum import ID

    assert {int(k) for k in RegionKind} == kinds.KINDS
    assert {k.name: int(k) for k in RegionKind} == {
        name.removeprefix("KIND_"): getattr(kinds, name) for name in dir(kinds) if name.startswith("KIND_")
    }
    assert int(RegionFlags.PERSISTENT) == kinds.FLAG_PERSISTENT == table.KNOWN_ENTRY_FLAGS
    assert {int(s) for s in TableState} == table.STATES
    assert {s.name: int(s) for s in TableState} == {
        name.removeprefix("STATE_"): getattr(table, name) for name in dir(table) if name.startswith("STATE_")
    }
    assert {int(i): i.name for i in ID if i < ids.USER_START} == ids.PREDEFINED
    assert (ID.BANNER, ID.PYCOREINFO, ID.USER_START, ID.USER_END) == (
        ids.BANNER_ID,
        ids.PYCOREINFO_ID,
        ids.USER_START,
        ids.USER_END,
    )


def test_the_public_names_are_the_enums() -> None:
    import kmemdump
    from kmemdump.formats.enums import RegionFlags
    from kmemdump.formats.enums import RegionKind
    from kmemdump.idenum import ID

    assert kmemdump.RegionKind is RegionKind
    assert kmemdump.RegionFlags is RegionFlags
    assert kmemdump.ID is ID


def test_a_table_reader_loads_no_enum() -> None:
    """Parsing a table (as ``dump PID`` does) gives plain ints and loads no ``enum``."""
    code = (  # no json here: it imports re, and re imports enum
        "import sys\n"
        "from kmemdump.formats.table import parse_header, parse_table\n"
        "from kmemdump.collector.dump import dump_target\n"
        "print(repr(sorted(m for m in ('enum', 'kmemdump.formats.enums', 'kmemdump.idenum')"
        " if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
