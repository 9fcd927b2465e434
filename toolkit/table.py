"""Readable tables: aligned text for the terminal, GitHub Markdown for reports."""

from __future__ import annotations


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """First column left-aligned, the rest right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"
