"""The PYCOREINFO blob format, and the live layout probe with its self-test."""

from __future__ import annotations

import collections
import contextlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump import record as records
from kmemdump.errors import DecodeError
from kmemdump.errors import DumpFormatError
from kmemdump.formats import pycoreinfo
from kmemdump.formats.pycoreinfo import FORMAT_VERSION
from kmemdump.formats.pycoreinfo import MAGIC
from kmemdump.formats.pycoreinfo import Layout
from kmemdump.formats.pycoreinfo import PyCoreInfo
from kmemdump.formats.pycoreinfo import TypeEntry
from kmemdump.producer.python import layout as layouts
from kmemdump.producer.python import live as pylive
from kmemdump.producer.python import selftest

# Instance attribute storage (added later, with defaults): a wrong value disables only attributes.
_INSTANCE_FIELDS = frozenset(f.name for f in records.fields(Layout) if f.default is not records.MISSING)


@pytest.fixture(scope="module")
def live() -> pylive.LiveInfo:
    result = pylive.probe()
    assert result.enabled, result.reason
    return result


@pytest.fixture
def info(live: pylive.LiveInfo) -> PyCoreInfo:
    found = live.info
    assert found is not None
    return found


def _payload(info: PyCoreInfo) -> dict[str, Any]:
    blob = info.encode()
    return dict(json.loads(blob[20:]))


def _blob(payload: object, *, magic: bytes = MAGIC, version: int = FORMAT_VERSION) -> bytes:
    body = json.dumps(payload).encode()
    return struct.pack("<12sII", magic, version, len(body)) + body


# --- the blob ------------------------------------------------------------------------------


def test_round_trip(info: PyCoreInfo) -> None:
    blob = info.encode()
    assert blob[:12] == b"PYCOREINFO\0\0"
    assert struct.unpack_from("<II", blob, 12) == (1, len(blob) - 20)
    assert pycoreinfo.decode(blob) == info
    assert PyCoreInfo.decode(blob + b"\0\0\0") == info  # note padding is allowed


def test_payload_describes_this_interpreter(info: PyCoreInfo) -> None:
    payload = _payload(info)
    assert payload["hexversion"] == sys.hexversion
    assert payload["implementation"] == "cpython"
    assert payload["bits_per_digit"] == sys.int_info.bits_per_digit
    assert payload["sizeof_digit"] == sys.int_info.sizeof_digit
    assert payload["pointer_size"] == struct.calcsize("P")
    assert payload["types"][f"0x{id(int):x}"] == {"name": "int", "flags": int.__flags__, "base": "int"}
    assert payload["constants"] == {
        f"0x{id(None):x}": "None",
        f"0x{id(True):x}": "True",
        f"0x{id(False):x}": "False",
    }
    assert info.version_string == ".".join(map(str, sys.version_info[:3]))


def test_bad_magic(info: PyCoreInfo) -> None:
    blob = bytearray(info.encode())
    blob[0:4] = b"JUNK"
    with pytest.raises(DumpFormatError, match="magic does not match"):
        pycoreinfo.decode(bytes(blob))


def test_unknown_version(info: PyCoreInfo) -> None:
    blob = bytearray(info.encode())
    blob[12] = 2
    with pytest.raises(DumpFormatError, match="format version is not supported") as caught:
        pycoreinfo.decode(bytes(blob))
    assert caught.value.context["version"] == 2


def test_truncated_and_trailing(info: PyCoreInfo) -> None:
    blob = info.encode()
    with pytest.raises(DumpFormatError, match="shorter than its header"):
        pycoreinfo.decode(blob[:10])
    with pytest.raises(DumpFormatError, match="truncated"):
        pycoreinfo.decode(blob[:-1])
    with pytest.raises(DumpFormatError, match="bytes after its payload"):
        pycoreinfo.decode(blob + b"x")


def test_not_json() -> None:
    body = b"{not json"
    with pytest.raises(DumpFormatError, match="not valid UTF-8 JSON"):
        pycoreinfo.decode(struct.pack("<12sII", MAGIC, 1, len(body)) + body)
    body = b"\xff\xfe"
    with pytest.raises(DumpFormatError, match="not valid UTF-8 JSON"):
        pycoreinfo.decode(struct.pack("<12sII", MAGIC, 1, len(body)) + body)
    with pytest.raises(DumpFormatError, match="payload must be a JSON object"):
        pycoreinfo.decode(_blob([1, 2]))


REQUIRED = (
    "hexversion",
    "implementation",
    "free_threaded",
    "bits_per_digit",
    "sizeof_digit",
    "pointer_size",
    "byteorder",
    "source",
    "layout",
    "types",
    "constants",
)


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_key(key: str, info: PyCoreInfo) -> None:
    payload = _payload(info)
    del payload[key]
    with pytest.raises(DumpFormatError, match=f"lacks the key '{key}'"):
        pycoreinfo.decode(_blob(payload))


@pytest.mark.parametrize("field", [f.name for f in records.fields(Layout) if f.name not in _INSTANCE_FIELDS])
def test_missing_layout_field(field: str, info: PyCoreInfo) -> None:
    payload = _payload(info)
    del payload["layout"][field]
    with pytest.raises(DumpFormatError, match=f"layout.{field}"):
        pycoreinfo.decode(_blob(payload))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("hexversion",), "3.11", "hexversion must be an integer"),
        (("hexversion",), True, "hexversion must be an integer"),
        (("free_threaded",), 0, "free_threaded must be true or false"),
        (("byteorder",), "middle", "byteorder has an unknown value"),
        (("pointer_size",), 6, "pointer_size must be 4 or 8"),
        (("sizeof_digit",), 3, "sizeof_digit must be 2 or 4"),
        (("bits_per_digit",), 40, "bits_per_digit is out of range"),
        (("layout", "ob_type"), -8, "layout.ob_type is out of range"),
        (("layout", "int_layout"), "digits", "layout.int_layout has an unknown value"),
        (("layout", "dk_entry_general"), 0, "dk_entry_general is too small"),
        (("types",), [], "types must be a JSON object"),
        (("constants",), {"0x10": "Ellipsis"}, "constants must name None, True or False"),
        (("constants",), {"16": "None"}, "constants key is not a hex address"),
    ],
)
def test_wrong_types_and_values(path: tuple[str, ...], value: object, message: str, info: PyCoreInfo) -> None:
    payload = _payload(info)
    target = payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(DumpFormatError, match=message):
        pycoreinfo.decode(_blob(payload))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": 3, "flags": 0, "base": ""}, r"types\[0x10\].name must be a string"),
        ({"name": "x", "flags": -1, "base": ""}, r"types\[0x10\].flags is out of range"),
        ({"name": "x", "flags": 0}, r"lacks the key 'types\[0x10\].base'"),
        ("x", r"types\[0x10\] must be a JSON object"),
    ],
)
def test_bad_type_entries(entry: object, message: str, info: PyCoreInfo) -> None:
    payload = _payload(info)
    payload["types"] = {"0x10": entry}
    with pytest.raises(DumpFormatError, match=message):
        pycoreinfo.decode(_blob(payload))


def test_unknown_keys_are_ignored(info: PyCoreInfo) -> None:
    payload = _payload(info)
    payload["added_later"] = {"anything": [1]}
    assert pycoreinfo.decode(_blob(payload)) == info


def test_info_is_immutable(info: PyCoreInfo) -> None:
    with pytest.raises(TypeError):
        info.types[1] = TypeEntry("x", 0)  # type: ignore[index]
    with pytest.raises(AttributeError):
        info.hexversion = 0  # type: ignore[misc]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_format_errors(data: bytes) -> None:
    for blob in (data, MAGIC + data, struct.pack("<12sII", MAGIC, 1, len(data)) + data):
        with pytest.raises(DumpFormatError):
            pycoreinfo.decode(blob)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.data())
def test_mutated_payloads_raise_only_format_errors(data: st.DataObject) -> None:
    info = pylive.default().info
    assert info is not None
    payload = _payload(info)
    # replace a few values anywhere in the tree with arbitrary JSON
    for _ in range(data.draw(st.integers(1, 3))):
        target: Any = payload
        while True:
            keys = list(target) if isinstance(target, dict) else []
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            if not isinstance(target[key], dict) or data.draw(st.booleans()):
                target[key] = data.draw(JSON)
                break
            target = target[key]
    try:
        decoded = pycoreinfo.decode(_blob(payload))
    except DumpFormatError:
        return
    assert isinstance(decoded, PyCoreInfo)


@settings(max_examples=examples(200), deadline=None)
@given(data=st.data())
def test_flipped_bytes_raise_only_format_errors(data: st.DataObject) -> None:
    info = pylive.default().info
    assert info is not None
    blob = bytearray(info.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DumpFormatError):
        pycoreinfo.decode(bytes(blob))


def test_deeply_nested_json_is_a_format_error() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(DumpFormatError):
        pycoreinfo.decode(struct.pack("<12sII", MAGIC, 1, len(body)) + body)


# --- the probe and its self-test -----------------------------------------------------------


def test_probe_picks_the_expected_source(live: pylive.LiveInfo) -> None:
    info = live.info
    assert info is not None
    expected = "debug_offsets" if sys.version_info >= (3, 13) else "table"
    assert info.source == expected
    if expected == "table":
        assert info.layout == layouts.TABLE[sys.version_info[:2]]


@pytest.mark.parametrize("version", sorted(layouts.TABLE), ids=lambda v: f"{v[0]}.{v[1]}")
def test_only_the_matching_table_passes_the_self_test(version: tuple[int, int]) -> None:
    layout = layouts.TABLE[version]
    matches = layout == layouts.TABLE.get(sys.version_info[:2])
    assert (selftest.self_test(layout) == "") == matches


_UNUSED_IN_310 = ("dk_log2_index_bytes", "dk_kind", "dk_entry_unicode")


def _corruptions(instance: bool = False) -> list[Any]:
    layout = layouts.TABLE.get(sys.version_info[:2]) or layouts.TABLE[max(layouts.TABLE)]
    params: list[Any] = []
    for field in records.fields(Layout):
        value = getattr(layout, field.name)
        if (field.name in _INSTANCE_FIELDS) != instance:
            continue
        if instance and not value:
            continue  # not used by this version's layout
        if field.name == "instance_dict":
            wrong = sorted(pycoreinfo.INSTANCE_LAYOUTS - {"", value})
        elif field.name == "dict_values_layout":
            wrong = sorted(pycoreinfo.VALUES_LAYOUTS - {"", value})
        elif field.name.startswith("flag_"):
            wrong = [value << 1, value >> 1]
        elif field.name == "int_layout":
            wrong: list[Any] = ["lv_tag" if value == "ob_size" else "ob_size"]
        elif field.name == "dict_keys_layout":
            wrong = ["dk_log2" if value == "dk_size" else "dk_size"]
        elif layout.dict_keys_layout == "dk_size" and field.name in _UNUSED_IN_310:
            continue  # not part of the 3.10 layout
        elif field.name.startswith("str_") and field.name.endswith(("_bit", "_shift")):
            wrong = [value + 1, value - 1]
        else:
            wrong = [value + 8] + ([value - 8] if value >= 8 else [])
        params.extend(pytest.param(field.name, w, id=f"{field.name}={w}") for w in wrong)
    return params


@pytest.mark.parametrize(("field", "wrong"), _corruptions())
def test_self_test_rejects_a_wrong_offset(field: str, wrong: Any) -> None:
    # GIVEN the right table with one field changed
    good = layouts.runtime_layout().layout
    assert good is not None
    bad = records.replace(good, **{field: wrong})
    # WHEN probing with it THEN decoding is disabled, with a reason, instead of lying
    result = pylive.probe(bad)
    assert not result.enabled
    assert result.info is None and result.layout is None and result.encode() is None
    assert result.reason.startswith("self-test failed: ")
    assert result.add_types([collections.OrderedDict]) is False
    with pytest.raises(DecodeError, match="decoding is disabled"):
        pylive.probe(bad, strict=True)


@pytest.mark.parametrize(("field", "wrong"), _corruptions(instance=True))
def test_a_wrong_instance_offset_disables_only_attributes(field: str, wrong: Any) -> None:
    # GIVEN the right layout with one of the instance attribute fields changed
    good = layouts.runtime_layout().layout
    assert good is not None and good.instance_dict
    bad = records.replace(good, **{field: wrong})
    # WHEN probing with it THEN the other decoders stay, attribute decoding goes, and the note says why
    assert selftest.self_test(bad) != ""
    result = pylive.probe(bad)
    assert result.enabled and result.layout is not None
    assert result.layout == layouts.without_instances(good)
    assert "instance attributes disabled: " in result.reason


def test_instance_fields_default_to_unsupported_in_older_blobs(info: PyCoreInfo) -> None:
    # GIVEN a blob from a producer that predates the instance fields
    payload = info.to_json()
    for name in _INSTANCE_FIELDS:
        del payload["layout"][name]
    body = json.dumps(payload).encode()
    old = pycoreinfo.decode(MAGIC + struct.pack("<II", FORMAT_VERSION, len(body)) + body)
    # THEN it decodes, with instance support off
    assert old.layout == layouts.without_instances(info.layout)
    assert old.layout.instance_dict == "" and old.layout.dict_values_layout == ""
    assert pycoreinfo.decode(info.encode()).layout == info.layout


def test_type_map_grows(live: pylive.LiveInfo) -> None:
    class Local(dict):  # type: ignore[type-arg]
        pass

    before = live.encode()
    assert live.add_types([Local]) is True
    assert live.add_types([Local, int]) is False
    info = live.info
    assert info is not None
    entry = info.types[id(Local)]
    assert entry == TypeEntry(f"{__name__}.{Local.__qualname__}", Local.__flags__, "dict")
    assert live.encode() != before
    with pytest.raises(TypeError):
        live.add_types([42])  # type: ignore[list-item]


def test_builtins_in_the_type_map(info: PyCoreInfo) -> None:
    names = {entry.name for entry in info.types.values()}
    assert {
        "str",
        "bytes",
        "bytearray",
        "int",
        "bool",
        "float",
        "NoneType",
        "tuple",
        "list",
        "dict",
        "type",
    } <= names
    assert info.types[id(bool)] == TypeEntry("bool", bool.__flags__, "bool")


def test_type_entry_names() -> None:
    assert pylive.type_entry(collections.OrderedDict).name == "collections.OrderedDict"
    assert pylive.type_entry(collections.OrderedDict).base == "dict"
    assert pylive.type_entry(type(None)).name == "NoneType"
    assert pylive.builtin_base(object) == ""
    assert pylive.builtin_base(type(collections)) == ""


def test_build_layout_is_the_shared_probe() -> None:
    assert pylive.build_layout() is pylive.default()


CORRUPT_EVERY_FIELD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from kmemdump import record as records
from kmemdump.producer.python import layout as layouts
from kmemdump.producer.python import live as pylive
from kmemdump.producer.python import selftest
from kmemdump.formats.pycoreinfo import Layout

OTHER = {"ob_size": "lv_tag", "lv_tag": "ob_size", "dk_size": "dk_log2", "dk_log2": "dk_size"}
OTHER.update(dictoffset="inline", managed="dictoffset", tagged="dictoffset", inline="dictoffset")
OTHER.update(array="header", prefix="header", header="prefix")
UNUSED_IN_310 = ("dk_log2_index_bytes", "dk_kind", "dk_entry_unicode")
choice = layouts.runtime_layout()
good = choice.layout
report = {"source": choice.source, "good": selftest.self_test(good), "undetected": []}
for field in records.fields(Layout):
    value = getattr(good, field.name)
    if field.default is not records.MISSING and not value:
        continue  # an instance storage field this version does not use
    if isinstance(value, str):
        wrong = [OTHER[value]]
    elif field.name.startswith("flag_"):
        wrong = [value << 1, value >> 1]
    elif good.dict_keys_layout == "dk_size" and field.name in UNUSED_IN_310:
        continue
    elif field.name.endswith(("_bit", "_shift")):
        wrong = [value + 1, value - 1]
    else:
        wrong = [value + 8] + ([value - 8] if value >= 8 else [])
    for w in wrong:
        if not selftest.self_test(records.replace(good, **{field.name: w})):
            report["undetected"].append(f"{field.name}={w}")
print(json.dumps(report))
"""


def _interpreters() -> list[Any]:
    params = []
    for version in ("3.10.13", "3.11.7", "3.12.1", "3.13.0"):
        path = Path("/root/.pyenv/versions") / version / "bin" / "python"
        marks = [] if path.exists() else [pytest.mark.skip(reason=f"{path} is not installed")]
        params.append(pytest.param(path, id=f"python={version.rsplit('.', 1)[0]}", marks=marks))
    return params


@pytest.mark.parametrize("python", _interpreters())
def test_self_test_catches_every_wrong_field_on_every_version(python: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [str(python), "-I", "-c", CORRUPT_EVERY_FIELD, str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["good"] == ""
    assert report["undetected"] == []
