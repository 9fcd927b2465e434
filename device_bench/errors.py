"""The one error type the runner raises for problems the user can fix."""


class BenchError(Exception):
    """A one-line, user-facing error: what went wrong and how to fix it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if empty), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
