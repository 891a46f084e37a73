"""A small name -> object registry that fails loudly on unknown or duplicate names."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from lowbit.errors import LowbitConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[object, T] = {}

    def register(self, key: object, item: T | None = None) -> Callable[[T], T] | T:
        """`reg.register("name", obj)` or as a decorator `@reg.register("name")`."""

        def add(obj: T) -> T:
            if key in self._items:
                raise LowbitConfigError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return add(item) if item is not None else add

    def get(self, key: object) -> T:
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(map(_name, self._items)))
            raise LowbitConfigError(f"unknown {self.kind} {_name(key)!r}; known: {known}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[object]:
        return iter(self._items)

    def items(self):
        return self._items.items()


def _name(key: object) -> str:
    return key.__name__ if isinstance(key, type) else str(key)
