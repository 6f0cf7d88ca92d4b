"""Progress for long work: a tqdm bar on a terminal, else a plain log line every few seconds."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tfpipes.progress")


class Progress:
    """Track ``done`` out of ``total`` units (bytes or steps) and an optional row/example count.

    ``enabled=None`` shows a bar only when stderr is a terminal; otherwise one log line every
    ``interval`` seconds (KFP and CI logs stay readable).
    """

    def __init__(
        self, name: str, total: int, unit: str = "it", enabled: bool | None = None, interval=10.0
    ):
        self.name, self.total, self.unit, self.interval = name, total, unit, interval
        self.done = 0
        self.rows = 0
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
                unit_divisor=1024 if scale else 1000,
                leave=False,
                dynamic_ncols=True,
            )

    def update_to(self, done: int, rows: int | None = None, **postfix) -> None:
        delta = done - self.done
        self.done = done
        if rows is not None:
            self.rows = rows
        if self._bar is not None:
            self._bar.update(delta)
            if rows is not None or postfix:
                self._bar.set_postfix(rows=self.rows, **postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            pct = f" ({100.0 * done / self.total:.0f}%)" if self.total else ""
            extra = "".join(f" {k}={v}" for k, v in postfix.items())
            log.info(
                "%s: %s/%s %s%s rows=%d%s",
                self.name,
                done,
                self.total,
                self.unit,
                pct,
                self.rows,
                extra,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
