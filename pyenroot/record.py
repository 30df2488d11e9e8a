"""Value classes for the modules a container start imports, without `dataclasses`.

Importing `dataclasses` (it brings `inspect`, `ast`, `dis`, `tokenize`) and building each class with it cost a
`start NAME true` more than all the work the start does after reading its options; so the types a start
passes between modules (settings, options, request, plan, mounts, hooks, launch) are `@record` classes. They
behave as the dataclasses they were for everything pyenroot uses: an `__init__` taking the annotated fields in
order (positionally or by name, defaults as class attributes, `factory(make)` for a fresh mutable default),
`__post_init__`, `__repr__`, `__eq__` between instances of the same class, and with `frozen=True` immutability
and `__hash__`; `replace(value, **changes)` makes a changed copy, `as_dict(value)` a dict (as `asdict`). A Slurm
step's modules use them too, down to the built-image cache's lookup and a writable step's unpacking, and so do
the built-in hooks' (PMI, GPU, MPI), which a start may run. Other modules keep using `dataclasses`.
"""

from __future__ import annotations

_UNSET = object()


class FrozenRecordError(AttributeError):
    """A field of a frozen record was assigned or deleted."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def factory(make):
    """A default made afresh for each instance (`dataclasses.field(default_factory=make)`)."""
    return _Factory(make)


def record(cls=None, *, frozen: bool = False):
    """Make `cls` a value class of its annotated fields (see the module's docstring)."""
    if cls is None:
        return lambda cls: _build(cls, frozen)
    return _build(cls, frozen)


def fields(value_or_class) -> tuple[str, ...]:
    return value_or_class.__record_fields__


def replace(value, **changes):
    """A copy of `value` with some fields changed (through `__init__`, so `__post_init__` checks it again)."""
    unknown = set(changes) - set(value.__record_fields__)
    if unknown:
        raise TypeError(f"{type(value).__name__} has no field {sorted(unknown)[0]!r}")
    return type(value)(**{name: changes.get(name, getattr(value, name)) for name in value.__record_fields__})


def as_dict(value):
    """A record as a dict of its fields, records inside it (also in lists, tuples and dicts) as dicts too, as
    `dataclasses.asdict` makes them (for JSON)."""
    if hasattr(type(value), "__record_fields__"):
        return {name: as_dict(getattr(value, name)) for name in value.__record_fields__}
    if isinstance(value, (list, tuple)):
        return type(value)(as_dict(item) for item in value)
    if isinstance(value, dict):
        return {key: as_dict(item) for key, item in value.items()}
    return value


def _build(cls, frozen: bool):
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (inspect is what this module avoids)
    defaults: dict = {}
    for name in names:
        default = cls.__dict__.get(name, _UNSET)
        if default is not _UNSET:
            defaults[name] = default
            if isinstance(default, _Factory):
                delattr(cls, name)
        elif defaults:
            raise TypeError(f"{cls.__name__}: field {name} without a default follows one with a default")
    init = _initialiser(cls.__qualname__, names, defaults, frozen, hasattr(cls, "__post_init__"))
    cls.__init__ = init
    cls.__record_fields__ = names
    if "__repr__" not in cls.__dict__:  # a class's own (one that hides a password) is kept, as dataclass does
        cls.__repr__ = _repr
    cls.__eq__ = _eq
    if frozen:
        cls.__hash__ = _hash
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr
    else:
        cls.__hash__ = None  # mutable and compared by value: unhashable, as a dataclass is
    return cls


def _initialiser(qualname: str, names: tuple[str, ...], defaults: dict, frozen: bool, post_init: bool):
    """One `__init__` shared in shape by every record class. Generating and compiling a function per class
    (as `dataclasses` and `namedtuple` do) cost a start about 0.1 ms per class, 1.1-1.7 ms in all; this one
    costs a few microseconds more per instance, and a start makes few."""
    count = len(names)
    known = frozenset(names)
    assign = object.__setattr__ if frozen else setattr  # a frozen record's own __setattr__ refuses

    def __init__(self, *args, **kwargs):
        if len(args) > count:
            raise TypeError(f"{qualname}() takes {count} arguments but {len(args)} were given")
        values = dict(zip(names, args, strict=False))  # fewer arguments than fields: the rest by name
        for name, value in kwargs.items():
            if name not in known:
                raise TypeError(f"{qualname}() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{qualname}() got multiple values for argument {name!r}")
            values[name] = value
        for name in names:
            if name in values:
                value = values[name]
            elif name in defaults:
                value = defaults[name]
                if isinstance(value, _Factory):
                    value = value.make()
            else:
                raise TypeError(f"{qualname}() missing required argument {name!r}")
            assign(self, name, value)
        if post_init:
            self.__post_init__()

    __init__.__qualname__ = f"{qualname}.__init__"
    return __init__


def _values(value) -> tuple:
    return tuple(getattr(value, name) for name in value.__record_fields__)


def _repr(self) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
    return f"{type(self).__qualname__}({inner})"


def _eq(self, other) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self) -> int:
    return hash(_values(self))


def _frozen_setattr(self, name, value) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r}")
