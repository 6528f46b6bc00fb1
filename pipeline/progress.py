"""Progress bars that suit where they are written: a live tqdm bar in a terminal, and in a log (stderr not
a TTY: `dvc repro > log`, CI) one full line every tenth of the way, never a carriage-return update.

`TQDM_DISABLE=1` silences both (tqdm reads it for every bar); the tests and benchmarks set it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_STEPS = 10  # lines per bar in a log


class _Silent:
    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LogLines(tqdm):
    """tqdm writing a newline-terminated status line each time another 1/LOG_STEPS of the total is done,
    and where it stopped, for files that are not terminals."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._written_step = -1
        self._written_n = -1
        kwargs.setdefault("mininterval", 0.0)  # display() decides what is written
        kwargs.setdefault("ascii", True)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        total = self.total or 0
        step = math.floor(LOG_STEPS * self.n / total) if total else 0
        if self.n != self._written_n and (step > self._written_step or self.n == 0 or (total and self.n >= total)):
            self._written_step = step
            self._write()
        return True

    def close(self) -> None:
        if self.disable:
            return super().close()
        if self.n != self._written_n:
            self._write()  # where the work stopped, when it stopped short
        self.fp = _Silent()  # tqdm's own closing writes "\r" and blank lines
        super().close()

    def _write(self) -> None:
        self._written_n = self.n
        self.fp.write(self.__str__().strip() + "\n")
        self.fp.flush()


def progress_bar(iterable: Iterable | None = None, file: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on `file` (stderr): live in a terminal, LogLines elsewhere. Same arguments as tqdm."""
    file = sys.stderr if file is None else file
    is_tty = getattr(file, "isatty", lambda: False)()
    return (tqdm if is_tty else LogLines)(iterable, file=file, **kwargs)
