"""Progress for long work: a tqdm bar on a terminal, else a plain log line every few seconds."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tfpipes.progress")


def _amount(n: float, unit: str) -> str:
    if unit == "B":
        return f"{n / 1e6:,.1f} MB"
    return f"{n:,.0f} {unit}"


class Progress:
    """Track ``done`` out of ``total`` units (bytes or steps) and an optional row/example count.

    ``enabled=None`` shows a bar only when stderr is a terminal; otherwise one log line every
    ``interval`` seconds (KFP and CI logs stay readable) with the amount done, the share of
    the total, the rows and the rates (MB/s for bytes, rows/s).
    """

    def __init__(
        self, name: str, total: int, unit: str = "it", enabled: bool | None = None, interval=10.0
    ):
        self.name, self.total, self.unit, self.interval = name, total, unit, interval
        self.done = 0
        self.rows = 0
        self._counts_rows = False  # rows were reported at least once
        self.t0 = self._last = time.monotonic()
        tty = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        if tty:
            from tqdm import tqdm

            scale = unit == "B"
            self._bar = tqdm(
                total=total,
                desc=name,
                unit=unit,
                unit_scale=scale,
                unit_divisor=1000,
                leave=False,
                dynamic_ncols=True,
            )

    def update_to(self, done: int, rows: int | None = None, **postfix) -> None:
        delta = done - self.done
        self.done = done
        if rows is not None:
            self.rows = rows
            self._counts_rows = True
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(delta)
            if self._counts_rows:
                rate = f"{self.rows / max(now - self.t0, 1e-9):,.0f}"
                self._bar.set_postfix(rows=f"{self.rows:,}", rows_s=rate, **postfix, refresh=False)
            elif postfix:
                self._bar.set_postfix(**postfix, refresh=False)
            return
        if now - self._last >= self.interval:
            self._last = now
            log.info("%s", self.line(now, **postfix))

    def line(self, now: float | None = None, **postfix) -> str:
        """One line: done/total (share), rows, rates."""
        secs = max((now or time.monotonic()) - self.t0, 1e-9)
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        total = f"/{_amount(self.total, self.unit)}" if self.total else ""
        rate = self.done / secs
        rate_s = f"{rate / 1e6:,.1f} MB/s" if self.unit == "B" else f"{rate:,.1f} {self.unit}/s"
        extra = "".join(f" {k}={v}" for k, v in postfix.items())
        rows = f", {self.rows:,} rows, {self.rows / secs:,.0f} rows/s" if self._counts_rows else ""
        return f"{self.name}: {_amount(self.done, self.unit)}{total}{pct}, {rate_s}{rows}{extra}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
