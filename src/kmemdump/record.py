"""Record classes: what ``@dataclass(frozen=True, slots=True)`` gives, at a fraction of its cost.

The command line's start-up is mostly spent defining classes: the ``dataclasses`` module imports
``inspect`` (with ``re``, ``enum``, ``ast`` and ``dis``: about 12 ms here) and writes each class's
methods as source text to compile (a third of a millisecond a class, and ``kmemdump dump`` defines
45). :func:`frozen` makes the same kind of class from methods written once, here, and specialised by
closures over the class's field names: no source text, no ``exec``, nothing imported but
:mod:`operator`.

A record has ``__slots__``, an ``__init__`` taking its fields in order (positionally or by name, with
their defaults), ``__repr__``, ``__eq__`` and ``__hash__`` over its fields, ``__match_args__``, and,
unless made by :func:`mutable`, refuses assignment (:class:`FrozenRecordError`, an ``AttributeError``).
``__post_init__`` runs after ``__init__`` when the class has one. :func:`field` sets a default
factory or leaves a field out of ``__init__``, ``repr`` or comparisons; :func:`fields`,
:func:`asdict` and :func:`replace` work as their namesakes in ``dataclasses`` do. Type checkers see a
dataclass (``dataclass_transform``).
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any
    from typing import TypeVar

    from typing_extensions import dataclass_transform

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_options: object) -> Callable[[_T], _T]:
        return lambda decorated: decorated


__all__ = [
    "MISSING",
    "Field",
    "FrozenRecordError",
    "asdict",
    "field",
    "fields",
    "frozen",
    "mutable",
    "replace",
    "setters",
]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""No default (a field that ``__init__`` requires)."""


class FrozenRecordError(AttributeError):
    """An assignment to (or deletion of) a field of a frozen record."""


class Field:
    """One field of a record: its name, default or default factory, and where it takes part."""

    __slots__ = ("compare", "default", "default_factory", "init", "name", "repr")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Any = MISSING,
        init: bool = True,
        repr: bool = True,  # the dataclasses name
        compare: bool = True,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("a field cannot have both a default and a default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, factory={self.default_factory!r})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    repr: bool = True,  # the dataclasses name
    compare: bool = True,
) -> Any:
    """A field's options, as the class attribute's value (``x: list[int] = field(default_factory=list)``)."""
    return Field(default, default_factory, init, repr, compare)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[_T], /) -> type[_T]:
    """Make ``cls`` a frozen record class (a new class of the same name, with slots)."""
    return _make(cls, is_frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable(cls: type[_T], /) -> type[_T]:
    """Make ``cls`` a record class whose fields may be assigned (not hashable)."""
    return _make(cls, is_frozen=False)


def fields(class_or_record: Any) -> tuple[Field, ...]:
    """The record class's fields, in order."""
    try:
        found: tuple[Field, ...] = class_or_record.__record_fields__
    except AttributeError:
        raise TypeError(f"not a record class or record: {class_or_record!r}") from None
    return found


def asdict(value: Any) -> dict[str, Any]:
    """A record as a dict of its fields, records inside it (and in lists, tuples and dicts) as dicts too."""
    return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}


def _plain(value: Any) -> Any:
    if hasattr(type(value), "__record_fields__"):
        return asdict(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple takes its fields apart
        return type(value)(*(_plain(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def replace(value: _T, /, **changes: Any) -> _T:
    """A copy of the record ``value`` with the fields named in ``changes`` changed."""
    for f in fields(value):
        if not f.init:
            if f.name in changes:
                raise ValueError(f"field {f.name!r} is not set by __init__: replace() cannot change it")
        elif f.name not in changes:
            changes[f.name] = getattr(value, f.name)
    return type(value)(**changes)


def _make(cls: type[_T], is_frozen: bool) -> type[_T]:
    """The record class: ``cls``'s namespace with its fields as slots and the methods added, made once
    (the methods go in before the class is made: setting them on a class afterwards costs more)."""
    namespace = dict(cls.__dict__)
    own: list[Field] = []
    for name, annotation in namespace.get("__annotations__", {}).items():
        if isinstance(annotation, str) and annotation.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = namespace.pop(name, MISSING)
        spec = value if isinstance(value, Field) else Field(default=value)
        spec.name = name
        own.append(spec)
    inherited: tuple[Field, ...] = getattr(cls, "__record_fields__", ())
    known = {f.name for f in own}
    all_fields = tuple(f for f in inherited if f.name not in known) + tuple(own)
    for name in ("__dict__", "__weakref__"):
        namespace.pop(name, None)
    namespace["__slots__"] = tuple(f.name for f in own if f.name not in {g.name for g in inherited})
    namespace["__record_fields__"] = all_fields
    finish = _add_methods(namespace, cls.__qualname__, all_fields, is_frozen)
    metaclass: Any = type(cls)
    made: type[_T] = metaclass(cls.__name__, cls.__bases__, namespace)
    made.__qualname__ = cls.__qualname__
    finish(made)
    return made


def _add_methods(
    namespace: dict[str, Any], title: str, all_fields: tuple[Field, ...], is_frozen: bool
) -> Callable[[Any], None]:
    """Put the methods into ``namespace``; returns what gives them the slots once the class is made."""
    init_fields = [f for f in all_fields if f.init]
    names = tuple(f.name for f in init_fields)
    count = len(names)
    positions = {name: i for i, name in enumerate(names)}
    # each init field's slot setter, and (setter, field) for the fields __init__ does not take but
    # sets from their defaults (the others are left to __post_init__): known once the class is made
    put: tuple[Callable[[Any, Any], None], ...] = ()
    rest: tuple[tuple[Callable[[Any, Any], None], Field], ...] = ()
    post_init = namespace.get("__post_init__")

    template = [f.default for f in init_fields]  # MISSING where required or made by a factory
    needed = tuple(i for i, f in enumerate(init_fields) if f.default is MISSING)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        given = len(args)
        if given > count:
            raise TypeError(f"{title}() takes {count} arguments but {given} were given")
        values = [*args, *template[given:]]
        for key, value in kwargs.items():
            index = positions.get(key)
            if index is None:
                raise TypeError(f"{title}() got an unexpected keyword argument {key!r}")
            if index < given:
                raise TypeError(f"{title}() got multiple values for argument {key!r}")
            values[index] = value
        for index in needed:
            if index >= given and values[index] is MISSING:
                spec = init_fields[index]
                if spec.default_factory is MISSING:
                    raise TypeError(f"{title}() missing required argument: {spec.name!r}")
                values[index] = spec.default_factory()
        return values

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        values = args if len(args) == count and not kwargs else bind(args, kwargs)
        for set_field, value in zip(put, values, strict=False):  # both have count elements
            set_field(self, value)
        for set_field, spec in rest:
            set_field(self, _default(spec))
        if post_init is not None:
            post_init(self)

    shown = tuple(f.name for f in all_fields if f.repr)

    def __repr__(self: Any) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in shown)})"

    compared = tuple(f.name for f in all_fields if f.compare)
    key = attrgetter(*compared) if len(compared) > 1 else _single(compared)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            same: bool = key(self) == key(other)
            return same
        return NotImplemented

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:  # pickle and copy
        return (_rebuild, (type(self), tuple(getattr(self, n) for n in names)))

    # like dataclasses: what the class body defines stays (an __eq__ of its own takes __hash__ away)
    explicit_hash = "__hash__" in namespace and not (namespace["__hash__"] is None and "__eq__" in namespace)
    methods: dict[str, Any] = {
        "__init__": __init__,
        "__repr__": __repr__,
        "__eq__": __eq__,
        "__reduce__": __reduce__,
    }
    if is_frozen:

        def __hash__(self: Any) -> int:
            return hash(key(self))

        def __setattr__(self: Any, name: str, value: object) -> None:
            raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {title}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {title}")

        for method in ("__setattr__", "__delattr__"):
            if method in namespace:
                raise TypeError(f"{title} is frozen: it cannot define {method}")
        methods.update(__setattr__=__setattr__, __delattr__=__delattr__)
        if not explicit_hash:
            methods["__hash__"] = __hash__
    elif not explicit_hash:
        methods["__hash__"] = None
    for method, function in methods.items():
        if method in namespace and method != "__hash__":
            continue
        if function is not None:
            function.__qualname__ = f"{title}.{method}"
        namespace[method] = function
    namespace["__match_args__"] = names

    def finish(made: Any) -> None:
        nonlocal put, rest
        setters = {f.name: _setter(made, f.name) for f in all_fields}
        put = tuple(setters[name] for name in names)
        rest = tuple((setters[f.name], f) for f in all_fields if not f.init and _has_default(f))

    return finish


def setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """Each field's slot ``__set__``, in order: a loop over thousands of records builds them with
    ``object.__new__(cls)`` and these, at half the cost of ``__init__`` (no ``__post_init__`` runs)."""
    return tuple(_setter(cls, f.name) for f in fields(cls))


def _setter(cls: Any, name: str) -> Callable[[Any, Any], None]:
    """The slot's own ``__set__``, which a frozen class's ``__setattr__`` does not stand in front of."""
    for klass in cls.__mro__:
        slot = klass.__dict__.get(name)
        if slot is not None and hasattr(slot, "__set__"):
            setter: Callable[[Any, Any], None] = slot.__set__
            return setter
    raise TypeError(f"{cls.__qualname__}.{name} is not a slot")


def _single(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _record: ()
    get = attrgetter(names[0])
    return lambda record: (get(record),)


def _has_default(spec: Field) -> bool:
    return spec.default is not MISSING or spec.default_factory is not MISSING


def _default(spec: Field) -> Any:
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def _rebuild(cls: Any, values: tuple[Any, ...]) -> Any:
    return cls(*values)
