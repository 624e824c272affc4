"""What is wrong with an RSpec, said so that a person can find it and fix it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sfa_omf.errors import GeniError, Reason


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a document: where (1-based line and column; 0 when not in the XML, e.g. an Allocate
    option), which element (as messages name it: "node", "ol:lease"; empty for the document as a whole) and what was
    expected."""

    line: int
    column: int
    element: str
    message: str

    def __str__(self) -> str:
        where = f"<{self.element}>: " if self.element else ""
        return f"{self.line}:{self.column}: {where}{self.message}"


class RSpecError(GeniError):
    """An RSpec we will not act on (GENI code BADARGS, or TOOBIG for an oversized one). ``problems`` lists every
    problem found, in document order; the message names the first."""

    def __init__(self, problems: Iterable[Problem], what: str = "RSpec", reason: Reason = Reason.BAD_ARGS) -> None:
        self.problems = tuple(sorted(problems))
        if not self.problems:
            raise ValueError("RSpecError needs at least one problem")
        more = len(self.problems) - 1
        super().__init__(reason, f"invalid {what}: {self.problems[0]}" + (f" (and {more} more)" if more else ""))
