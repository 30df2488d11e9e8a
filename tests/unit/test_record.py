"""`@record` value classes behave as the dataclasses they replace on the start path."""

import pytest

from pyenroot.record import FrozenRecordError, factory, fields, record, replace


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list = factory(list)

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must not be negative")


@record
class Box:
    items: list = factory(list)
    label: str = ""


def test_fields_in_order_positionally_or_by_name():
    assert fields(Point) == ("x", "y", "tags")
    assert Point(1, 2) == Point(x=1, y=2) == Point(1, y=2, tags=[])
    assert Point(1) != Point(2)
    assert Point(1).__eq__((1, 0, [])) is NotImplemented
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, z=3)


def test_a_factory_makes_a_fresh_default_each_time():
    first, second = Box(), Box()
    first.items.append(1)
    assert second.items == []
    assert "items" not in Box.__dict__


def test_frozen_records_are_immutable_and_hashable():
    point = Point(1, 2)
    with pytest.raises(FrozenRecordError):
        point.x = 3
    with pytest.raises(AttributeError):
        del point.y
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, ()))
    with pytest.raises(TypeError):
        hash(Box())  # mutable records compare by value, so they are unhashable


def test_post_init_runs_on_creation_and_replace():
    with pytest.raises(ValueError):
        Point(-1)
    assert replace(Point(1, 2), y=5) == Point(1, 5)
    with pytest.raises(ValueError):
        replace(Point(1), x=-1)
    with pytest.raises(TypeError):
        replace(Point(1), z=1)


def test_repr_names_the_fields():
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    box = Box()
    box.label = "mutable"
    assert repr(box) == "Box(items=[], label='mutable')"


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError):
        @record
        class Wrong:
            a: int = 0
            b: int


def test_arguments_are_checked_as_a_generated_init_would():
    with pytest.raises(TypeError, match="takes 3 arguments but 4"):
        Point(1, 2, [], 4)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="missing required argument 'x'"):
        Point(y=1)
    assert Point.__init__.__qualname__ == "Point.__init__"
