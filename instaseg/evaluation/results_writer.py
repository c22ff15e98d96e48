"""A JSON list written item by item: a long prediction run keeps its finished work.

After every :meth:`JsonListWriter.extend` the file is a complete, valid JSON list of everything
written so far (the closing ``]`` is rewritten each time), so a run stopped by an unreadable
image, Ctrl-C or a crash leaves a results file that ``instaseg eval --results`` can score.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["JsonListWriter"]


class JsonListWriter:
    """``with JsonListWriter(path) as out: out.extend(items)``; ``out.count`` items so far."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._end = 1  # where the closing "]" starts: after "[" and the items so far
        self._file.write(b"[]\n")
        self._file.flush()

    def extend(self, items: Iterable[Any]) -> None:
        """Append ``items`` (JSON-serialisable) and flush: the file is valid JSON again on return."""
        lines = [json.dumps(item) for item in items]
        if not lines:
            return
        text = ",\n".join(lines)
        chunk = (("\n" if self.count == 0 else ",\n") + text).encode("utf-8")
        self._file.seek(self._end)
        self._file.write(chunk + b"\n]\n")
        self._file.flush()
        self._end += len(chunk)
        self.count += len(lines)

    def append(self, item: Any) -> None:
        self.extend([item])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonListWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
