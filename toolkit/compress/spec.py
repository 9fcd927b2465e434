"""Method specs as the user writes them: `tt:ratio=4`, `svd:rank=64`, `tt:ratio=4,shape=8x8x9`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from toolkit.errors import TensoredgeError

WHOLE = ("rank", "order", "tiers", "exact")  # counts: 1.5 is refused, never rounded down
POSITIVE = ("ratio", "head_ratio", "eps", "boost", "top")


@dataclass(frozen=True)
class MethodSpec:
    """A decomposition method name and its parameters."""

    method: str
    params: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        def show(value: object) -> str:
            return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)

        args = ",".join(f"{k}={show(v)}" for k, v in self.params.items())
        return f"{self.method}:{args}" if args else self.method

    def number(self, key: str) -> float | None:
        """A numeric parameter, or None when absent: finite, and a whole number >= 1 for WHOLE keys."""
        value = self.params.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TensoredgeError(f"'{key}' in '{self}' must be a number, e.g. {self.method}:{key}=4")
        if not math.isfinite(value):
            raise TensoredgeError(f"{key}={value} in '{self}' must be a finite number, e.g. {self.method}:{key}=4")
        if key in WHOLE and (value != int(value) or value < 1):
            raise TensoredgeError(f"{key}={value:g} in '{self}' must be a whole number of at least 1, "
                                  f"e.g. {self.method}:{key}={max(1, int(value))}")
        if key in POSITIVE and value <= 0:
            raise TensoredgeError(f"{key}={value:g} in '{self}' must be positive")
        return float(value)


def _value(text: str) -> object:
    if "x" in text and all(part.isdigit() for part in text.split("x")):
        return tuple(int(part) for part in text.split("x"))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str) -> MethodSpec:
    """Parse `method[:key=value,...]`; a malformed spec is a one-line error."""
    method, _, rest = text.strip().partition(":")
    if not method:
        raise TensoredgeError(f"empty method spec '{text}': write e.g. tt:ratio=4 or svd:ratio=1.5")
    params: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise TensoredgeError(f"bad parameter '{item}' in '{text}': write key=value, e.g. {method}:ratio=4")
        params[key.strip()] = _value(value.strip())
    return MethodSpec(method.strip(), params)
