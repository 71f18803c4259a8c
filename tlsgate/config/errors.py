"""Configuration problems and the exception that carries them.

The loader collects every problem it finds instead of stopping at the first one, so an operator
fixes a broken file in one pass. Each problem knows where it is, in the ``FILE:LINE:COL: message``
form that editors and CI logs turn into clickable links.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file.

    ``line`` and ``col`` are 1-based and ``None`` when no position is known (a required section
    that is missing, for instance); the message then starts with the key path it is about.
    """

    file: Path
    line: int | None
    col: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col or 1}: {self.message}"

    def sort_key(self) -> tuple[int, int, int]:
        """Order problems as they appear in the file; those without a position go last."""
        if self.line is None:
            return (1, 0, 0)
        return (0, self.line, self.col or 0)


class ConfigError(Exception):
    """A configuration that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))
