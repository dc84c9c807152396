"""Bad-input errors and the report of skipped lines."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["InputError", "BadLine", "BadLineReport", "SKIP_HINT"]


# No hint where skipping cannot help (no rows, a file whose later lines cannot be trusted) or was asked for.
SKIP_HINT = " (use --skip-bad-lines to skip and count bad lines)"
_NO_HINT = ("empty_dataset", "empty_file", "too_many_bad_lines", "bad_encoding", "unmatched_quote")


class InputError(ValueError):
    """Malformed input, located by file, line and column (1-based; 0 when not applicable)."""

    def __init__(self, path: str, line: int, column: int, kind: str, message: str, feature: str | None = None):
        self.path, self.line, self.column, self.kind, self.feature = str(path), line, column, kind, feature
        self.message = message
        where = f"{path}:{line}" if line else str(path)
        if column:
            where += f": column {column}" + (f" ({feature})" if feature else "")
        # no hint where skipping cannot help, or was asked for (too many bad lines)
        hint = "" if kind in _NO_HINT else SKIP_HINT
        super().__init__(f"{where}: {message}{hint}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.line, self.column, self.kind, self.message, self.feature))


@dataclass
class BadLine:
    path: str
    line: int
    column: int
    kind: str
    message: str

    def __str__(self) -> str:
        col = f": column {self.column}" if self.column else ""
        return f"{self.path}:{self.line}{col}: [{self.kind}] {self.message}"


@dataclass
class BadLineReport:
    """Counts of skipped lines by kind, with the first ``keep`` examples."""

    keep: int = 20
    counts: Counter = field(default_factory=Counter)
    examples: list[BadLine] = field(default_factory=list)

    def add(self, bad: BadLine) -> None:
        self.counts[bad.kind] += 1
        if len(self.examples) < self.keep:
            self.examples.append(bad)

    def merge(self, other: "BadLineReport | None") -> None:
        """Add the counts and (up to ``keep``) the examples of ``other``."""
        if other is None:
            return
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: max(0, self.keep - len(self.examples))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def state(self) -> dict:
        """Everything, for a checkpoint (``from_state`` restores it)."""
        return {"keep": self.keep, "counts": dict(self.counts), "examples": [vars(b) for b in self.examples]}

    @classmethod
    def from_state(cls, state: dict) -> "BadLineReport":
        return cls(state["keep"], Counter(state["counts"]), [BadLine(**b) for b in state["examples"]])

    def to_dict(self) -> dict:
        return {"skipped": self.total, "by_kind": dict(self.counts), "examples": [str(b) for b in self.examples]}

    def summary(self) -> str:
        if not self.total:
            return "no bad lines"
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        lines = [f"skipped {self.total} bad line(s) ({kinds})"] + [f"  {b}" for b in self.examples]
        if self.total > len(self.examples):
            lines.append(f"  ... and {self.total - len(self.examples)} more")
        return "\n".join(lines)
