"""Small JSON-lines files read whole (benchmarks, prediction and pair files), with one-line
errors naming file and line. Corpora, which must stream and may skip bad rows, use data.corpus."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from data.errors import InputError, not_utf8


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for each non-blank line; a line that is not a JSON object raises
    ``InputError("path:line: why")``."""
    path = Path(path)
    try:
        handle = open(path, "rb")  # decoded line by line, so a bad byte is reported with its line
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{line_no}: {not_utf8(err)}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{line_no}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object")
            yield line_no, row
