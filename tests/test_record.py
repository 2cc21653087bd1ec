"""Record classes (kmemdump.record) behave as the frozen slotted dataclasses they replace.

Each check builds the same class both ways and compares what users of the class see: construction
(positional, by name, defaults, factories, the errors), repr, equality, hashing, immutability,
pickling and copying, pattern matching, ``fields``/``asdict``/``replace``, ``__post_init__`` and
fields left out of ``__init__``. Hypothesis drives the values and the way the arguments are passed.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.record import MISSING
from kmemdump.record import FrozenRecordError
from kmemdump.record import asdict
from kmemdump.record import field
from kmemdump.record import fields
from kmemdump.record import frozen
from kmemdump.record import mutable
from kmemdump.record import replace
from kmemdump.record import setters


@frozen
class Point:
    x: int
    name: str
    tags: tuple[str, ...] = ()
    note: str | None = None
    extra: list[int] = field(default_factory=list, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DataPoint:
    x: int
    name: str
    tags: tuple[str, ...] = ()
    note: str | None = None
    extra: list[int] = dataclasses.field(default_factory=list, compare=False)


@frozen
class Outer:
    inner: Point
    many: tuple[Point, ...] = ()
    by_name: dict[str, Point] = field(default_factory=dict)


_VALUES = st.fixed_dictionaries(
    {"x": st.integers(), "name": st.text(max_size=8)},
    optional={
        "tags": st.tuples(st.text(max_size=3)),
        "note": st.none() | st.text(max_size=5),
        "extra": st.lists(st.integers(), max_size=3),
    },
)


@settings(max_examples=examples(200), deadline=None)
@given(values=_VALUES, positional=st.integers(0, 5))
def test_a_record_is_built_and_seen_as_the_dataclass_is(values: dict[str, Any], positional: int) -> None:
    order = ["x", "name", "tags", "note", "extra"]
    # up to `positional` arguments by position (those given, in order), the rest by name
    given_in_order: list[str] = []
    for name in order[:positional]:
        if name not in values:
            break
        given_in_order.append(name)
    args = [values[name] for name in given_in_order]
    kwargs = {k: v for k, v in values.items() if k not in given_in_order}
    ours, theirs = Point(*args, **kwargs), DataPoint(*args, **kwargs)
    assert repr(ours) == repr(theirs).replace("DataPoint", "Point")
    assert asdict(ours) == dataclasses.asdict(theirs)
    assert ours == Point(*args, **kwargs)
    assert hash(ours) == hash(Point(*args, **kwargs))
    assert ours == replace(ours, extra=[99])  # compare=False: left out of == and hash
    assert hash(ours) == hash(replace(ours, extra=[99]))
    assert ours != replace(ours, x=values["x"] + 1)
    assert pickle.loads(pickle.dumps(ours)) == ours
    assert copy.deepcopy(ours) == ours
    assert copy.copy(ours) == ours


def test_construction_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match="missing required argument: 'name'"):
        Point(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        Point(1, "a", colour=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, "a", x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 5 arguments but 6 were given"):
        Point(1, "a", (), None, [], 6)  # type: ignore[call-arg]


def test_each_default_factory_makes_a_new_value() -> None:
    first, second = Point(1, "a"), Point(1, "a")
    assert first.extra == [] and first.extra is not second.extra
    assert Point(1, "a").tags == () and Point(1, "a").note is None


def test_a_frozen_record_refuses_assignment_and_deletion() -> None:
    point = Point(1, "a")
    with pytest.raises(FrozenRecordError, match="cannot assign to field 'x'"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenRecordError is an AttributeError, as dataclasses' is
        del point.name  # type: ignore[misc]
    with pytest.raises(AttributeError):
        point.other = 1  # type: ignore[attr-defined]
    assert not hasattr(point, "__dict__")  # slots, like slots=True


def test_a_mutable_record_takes_assignment_and_is_not_hashable() -> None:
    @mutable
    class Counter:
        count: int = 0
        seen: list[str] = field(default_factory=list)

    counter = Counter()
    counter.count += 1
    counter.seen.append("a")
    assert counter == Counter(1, ["a"])
    with pytest.raises(TypeError):
        hash(counter)
    with pytest.raises(AttributeError):
        counter.other = 1  # type: ignore[attr-defined]


def test_what_the_class_defines_itself_is_kept() -> None:
    @frozen
    class Shown:
        text: str

        def __repr__(self) -> str:
            return self.text

    @frozen
    class Keyed:
        key: str
        payload: bytes = b""

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Keyed) and other.key == self.key

        def __hash__(self) -> int:
            return hash(self.key)

    assert repr(Shown("as is")) == "as is"
    assert Keyed("a", b"1") == Keyed("a", b"2") and hash(Keyed("a", b"1")) == hash("a")
    with pytest.raises(TypeError, match="frozen"):

        @frozen
        class Bad:
            value: int

            def __setattr__(self, name: str, value: object) -> None:
                pass


def test_post_init_and_fields_left_out_of_init() -> None:
    @frozen
    class Sized:
        data: bytes
        size: int = field(init=False, compare=False)
        label: str = field(default="", init=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "size", len(self.data))

    sized = Sized(b"abc")
    assert (sized.size, sized.label) == (3, "")
    assert [f.name for f in fields(Sized)] == ["data", "size", "label"]
    assert [f.init for f in fields(sized)] == [True, False, False]
    assert replace(sized, data=b"abcdef").size == 6
    with pytest.raises(ValueError, match="size"):
        replace(sized, size=1)
    assert Sized.__match_args__ == ("data",)


def test_fields_asdict_and_match() -> None:
    inner = Point(1, "a", ("t",))
    outer = Outer(inner, (inner, Point(2, "b")), {"k": inner})
    assert asdict(outer) == {
        "inner": asdict(inner),
        "many": (asdict(inner), asdict(Point(2, "b"))),
        "by_name": {"k": asdict(inner)},
    }
    assert [(f.name, f.default is MISSING) for f in fields(Point)][:3] == [
        ("x", True),
        ("name", True),
        ("tags", False),
    ]
    match inner:
        case Point(x, name):
            assert (x, name) == (1, "a")
        case _:
            pytest.fail("a record matches its class pattern by position")
    with pytest.raises(TypeError, match="not a record"):
        fields(DataPoint)


def test_asdict_rebuilds_named_tuples_as_dataclasses_does() -> None:
    from collections import namedtuple

    Pair = namedtuple("Pair", "left right")

    @frozen
    class Holder:
        pair: Any

    held = Holder(Pair(Point(1, "a"), 2))
    assert asdict(held) == {"pair": Pair(asdict(Point(1, "a")), 2)}
    assert type(asdict(held)["pair"]) is Pair


def test_setters_build_the_same_record_without_init() -> None:
    made = object.__new__(Point)
    for set_field, value in zip(setters(Point), (1, "a", (), None, []), strict=True):
        set_field(made, value)
    assert made == Point(1, "a")
    assert hash(made) == hash(Point(1, "a"))


def test_mypy_sees_records_as_dataclasses(tmp_path: Path) -> None:
    """The decorators carry ``dataclass_transform``: a wrong argument and an assignment to a frozen
    field are type errors, a mutable record's field is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from kmemdump.record import field, frozen, mutable\n"
        "@frozen\nclass F:\n    a: int\n    b: list[int] = field(default_factory=list)\n"
        "@mutable\nclass M:\n    n: int = 0\n"
        "f = F(1)\nf.a = 2\nF('x')\nm = M()\nm.n = 3\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(sample)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["10", "11"], done.stdout
