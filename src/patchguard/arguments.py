"""Argument types for the command-line parsers, cheap to import: `--help` builds every
command's parser, so a type must not import its library (pathlib) until a value is parsed."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path


def path(text: str) -> Path:
    """A path argument (argparse `type=`): pathlib is imported only when one is given."""
    from pathlib import Path

    return Path(text)
