"""Progress on the terminal: cells done, the current stage, time left."""
from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr  # the stderr of the moment (tests capture it)
        self.finished = 0
        self.ran, self.ran_seconds = 0, 0.0
        self.started = time.perf_counter()
        self.cell_started_at = self.started
        self.current = ""
        self.interactive = self.stream.isatty()
        self.last_stage = 0.0
        self.flagged: list[tuple[str, str]] = []  # (cell, flags) of the cells computed in this run

    def eta(self) -> str:
        if not self.ran:
            return "estimating"
        remaining = (self.total - self.finished) * self.ran_seconds / self.ran
        return f"~{format_seconds(remaining)} left"

    def header(self) -> str:
        elapsed = format_seconds(time.perf_counter() - self.started)
        return f"[{self.finished}/{self.total} cells | {elapsed} | {self.eta()}]"

    def write(self, text: str, final: bool = True) -> None:
        if self.interactive:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def cell_started(self, cell, where: str = "") -> None:
        self.current = cell.describe()
        self.cell_started_at = time.perf_counter()
        self.write(f"{self.header()} {self.current}" + (f" (on {where})" if where else ""))

    def stage(self, message: str) -> None:
        now = time.perf_counter()
        if self.interactive:
            self.write(f"{self.header()} {self.current}: {message}", final=False)
        elif now - self.last_stage > 10:  # logs: one stage line every 10 s at most
            self.write(f"    {message}")
            self.last_stage = now

    def note(self, message: str) -> None:
        """A line that is always written (unlike a stage's, which logs show every 10 s at most): a wait."""
        self.write(f"    {message}")

    def cell_finished(self, cell, status: str, error: str = "", flags: str = "") -> None:
        seconds = time.perf_counter() - self.cell_started_at
        self.finished += 1
        self.ran += 1
        self.ran_seconds += seconds
        suffix = f" ERROR: {error}" if status != "ok" else (" FLAGGED" if flags else "")
        self.write(f"{self.header()} {cell.describe()} done in {format_seconds(seconds)}{suffix}")
        if flags:
            self.flagged.append((cell.describe(), flags))

    def cell_cached(self, cell) -> None:
        self.finished += 1

    def cell_failed(self, cell, exc: BaseException) -> None:
        self.finished += 1
        self.write(f"{self.header()} {cell.describe()} ERROR: {type(exc).__name__}: {exc}")

    def summary(self, counts: dict, results_dir) -> None:
        elapsed = format_seconds(time.perf_counter() - self.started)
        self.write(f"{counts['ran']} cells computed, {counts['cached']} from the cache, {counts['error']} failed "
                   f"in {elapsed}; results in {results_dir}/")
        if self.flagged:
            self.write(f"{len(self.flagged)} computed cell(s) carry sanity flags (the 'flags' column; the leaderboard "
                       f"shows them):")
            for cell, flags in self.flagged:
                self.write(f"  {cell}: {flags}")
