"""The running interpreter's PYCOREINFO, checked, with the type map that grows as objects register.

:func:`probe` picks the offsets (:mod:`.layout`), runs the self-test (:mod:`.selftest`) and, if
anything disagrees, disables decoding: the result then carries no :class:`PyCoreInfo`, only the
reason. :class:`LiveInfo` keeps the type map, which starts with the builtins the decoders know and
grows through :meth:`LiveInfo.add_types` as the registry sees new types. Standard library only.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from kmemdump.errors import DecodeError
from kmemdump.formats.pycoreinfo import Layout
from kmemdump.formats.pycoreinfo import PyCoreInfo
from kmemdump.formats.pycoreinfo import TypeEntry
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.python.layout import free_threaded
from kmemdump.producer.python.layout import runtime_layout
from kmemdump.producer.python.layout import without_instances
from kmemdump.producer.python.selftest import self_test

__all__ = ["KNOWN_TYPES", "LiveInfo", "build_layout", "builtin_base", "default", "probe", "type_entry"]

KNOWN_TYPES: Final[tuple[type, ...]] = (
    str,
    bytes,
    bytearray,
    int,
    bool,
    float,
    type(None),
    tuple,
    list,
    dict,
    type,
)
"""The builtin types the inspector decodes; the type map always holds them."""

_KNOWN_NAMES: Final[Mapping[type, str]] = MappingProxyType({t: t.__name__ for t in KNOWN_TYPES})


def builtin_base(cls: type) -> str:
    """The name of the nearest decodable builtin in ``cls``'s MRO, or ``""``."""
    try:
        mro = type.__getattribute__(cls, "__mro__")
    except (AttributeError, TypeError):
        return ""
    for klass in mro:
        name = _KNOWN_NAMES.get(klass)
        if name is not None:
            return name
    return ""


def type_entry(cls: type) -> TypeEntry:
    """The type-map entry for ``cls``: bare names for builtins, ``module.qualname`` otherwise."""
    name = _KNOWN_NAMES.get(cls)
    if name is None:
        module = type.__getattribute__(cls, "__module__")
        qualname = type.__getattribute__(cls, "__qualname__")
        module = module if isinstance(module, str) else ""
        name = qualname if module in ("", "builtins") else f"{module}.{qualname}"
    return TypeEntry(name=name, flags=int(type.__getattribute__(cls, "__flags__")), base=builtin_base(cls))


class LiveInfo:
    """The running interpreter's PYCOREINFO (or why there is none) and its growing type map.

    Safe to share between threads. Types added are kept alive, so their addresses cannot be
    reused by other types while the map names them.
    """

    def __init__(self, base: PyCoreInfo | None, reason: str) -> None:
        self._base = base
        self._reason = reason
        self._lock = fork_safe_lock()
        self._types: dict[int, type] = {}
        self._entries: dict[int, TypeEntry] = {}
        self._current: PyCoreInfo | None = base
        if base is not None:
            self.add_types(KNOWN_TYPES)

    @property
    def enabled(self) -> bool:
        """Whether objects can be decoded (the layout passed the self-test)."""
        return self._base is not None

    @property
    def reason(self) -> str:
        """Why decoding is disabled, or remarks about the layout's origin (may be empty)."""
        return self._reason

    @property
    def layout(self) -> Layout | None:
        """The checked layout, or None when decoding is disabled."""
        return None if self._base is None else self._base.layout

    @property
    def info(self) -> PyCoreInfo | None:
        """The current PYCOREINFO, type map included; None when decoding is disabled."""
        current = self._current
        if current is not None and len(current.types) != len(self._entries):
            with self._lock:
                assert self._base is not None
                current = self._current = self._base.with_types(self._entries)
        return current

    def encode(self) -> bytes | None:
        """The PYCOREINFO blob, or None when decoding is disabled."""
        info = self.info
        return None if info is None else info.encode()

    def add_types(self, types: Iterable[type]) -> bool:
        """Add these types to the map; True when the map changed (the blob must be rewritten)."""
        if self._base is None:
            return False
        changed = False
        for cls in types:
            address = id(cls)
            if address in self._types:
                continue
            if not isinstance(cls, type):
                raise TypeError(f"add_types takes types, not {type(cls).__name__}")
            entry = type_entry(cls)
            with self._lock:
                if address not in self._types:
                    self._types[address] = cls
                    self._entries[address] = entry
                    changed = True
        return changed


def probe(layout: Layout | None = None, *, strict: bool = False) -> LiveInfo:
    """Build and check the PYCOREINFO of this interpreter.

    ``layout`` overrides the offsets (for tests and experiments); it is checked all the same.
    A failed check returns a disabled :class:`LiveInfo`, or raises :class:`DecodeError` when
    ``strict``.
    """
    if layout is None:
        choice = runtime_layout()
        layout, source, note = choice.layout, choice.source, choice.note
    else:
        source, note = "given", ""
    if layout is None:
        return _disabled(f"no layout: {note}", strict)
    failure = self_test(layout)
    if failure and layout.instance_dict:
        # the core offsets may hold even if the attribute storage ones do not: keep the former
        bare = without_instances(layout)
        if not self_test(bare):
            note = f"{note}; " if note else ""
            note += f"instance attributes disabled: {failure}"
            layout, failure = bare, ""
    if failure:
        where = f" ({source} offsets{'; ' + note if note else ''})"
        return _disabled(f"self-test failed: {failure}{where}", strict)
    base = PyCoreInfo(
        hexversion=sys.hexversion,
        implementation=sys.implementation.name,
        free_threaded=free_threaded(),
        bits_per_digit=sys.int_info.bits_per_digit,
        sizeof_digit=sys.int_info.sizeof_digit,
        pointer_size=struct.calcsize("P"),
        byteorder=sys.byteorder,
        source=source,
        layout=layout,
        types={},
        constants={id(None): "None", id(True): "True", id(False): "False"},
    )
    return LiveInfo(base, note)


def _disabled(reason: str, strict: bool) -> LiveInfo:
    if strict:
        raise DecodeError(f"Python object decoding is disabled: {reason}")
    return LiveInfo(None, reason)


def build_layout() -> LiveInfo:
    """The process-wide :class:`LiveInfo` (see :func:`default`); raises :class:`DecodeError`
    with the reason when decoding is disabled."""
    live = default()
    if not live.enabled:
        raise DecodeError(f"Python object decoding is disabled: {live.reason}")
    return live


_default_lock = fork_safe_lock()
_default: list[LiveInfo] = []


def default() -> LiveInfo:
    """The process-wide :class:`LiveInfo`, probed once on first use."""
    if not _default:
        with _default_lock:
            if not _default:
                _default.append(probe())
    return _default[0]
