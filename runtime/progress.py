"""Progress of a compile (load, import, each pass, build, report) as one tqdm bar on stderr, naming the step
that is running: a 7B model spends minutes there, and a silent prompt looks hung.

Shown where tqdm shows bars by default (stderr is a terminal); ACTSPARSE_PROGRESS=1 forces it on (e.g. in a log),
ACTSPARSE_PROGRESS=0 off.
"""

from __future__ import annotations

import contextlib
import os


class Steps:
    """`start(name)`: the previous step is done, `name` runs now; `more(n)`: n more steps than first announced."""

    def __init__(self, bar):
        self.bar = bar
        self._running = False

    def start(self, name: str) -> None:
        if self._running:
            self.bar.update(1)
        self._running = True
        self.bar.set_postfix_str(name, refresh=True)

    def more(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()


@contextlib.contextmanager
def steps(desc: str, total: int):
    """A `Steps` over a bar of `total` steps, closed (and cleared) when the block ends."""
    from tqdm.auto import tqdm

    setting = os.environ.get("ACTSPARSE_PROGRESS", "")
    disable = {"0": True, "1": False}.get(setting)  # None: tqdm's rule (off when stderr is not a terminal)
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=disable, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}")
    try:
        yield Steps(bar)
    finally:
        if bar.total and not bar.disable:
            bar.update(bar.total - bar.n)
        bar.close()
