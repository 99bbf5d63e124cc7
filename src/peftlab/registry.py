"""Name -> class registries for PEFT methods and tasks (how `peft=lora` and `task=sst2` find their code)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from peftlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str, key: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"{key}={name!r} is not a known {self.kind}; allowed: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)
