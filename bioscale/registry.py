"""One small generic registry, so every unknown name gets the same did-you-mean error."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from bioscale.errors import BioscaleError

T = TypeVar("T")


class UnknownNameError(BioscaleError, KeyError):
    """An unknown rule, architecture or dataset name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to entries of one kind ("rule", "arch", "dataset"), listed in ``order`` (entry -> sort key;
    default: registration order). ``on_first_use`` callbacks run before the first lookup, so entries can be
    discovered lazily (registering never triggers them)."""

    def __init__(self, kind: str, order: Callable[[T], Any] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._order = order
        self._pending: list[Callable[[], None]] = []

    def on_first_use(self, load: Callable[[], None]) -> None:
        self._pending.append(load)

    def _ready(self) -> dict[str, T]:
        while self._pending:
            self._pending.pop(0)()
        return self._entries

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove an entry (tests, and a plugin that is unloaded); unknown names raise as ``get`` does."""
        if name not in self._ready():
            raise UnknownNameError(self.unknown_message(name))
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._ready()[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}."

    def names(self) -> list[str]:
        return [name for name, _ in self.items()]

    def __contains__(self, name: object) -> bool:
        return name in self._ready()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        items = list(self._ready().items())
        if self._order is not None:
            items.sort(key=lambda item: self._order(item[1]))  # type: ignore[misc]
        return items

    def values(self) -> list[T]:
        return [entry for _, entry in self.items()]
