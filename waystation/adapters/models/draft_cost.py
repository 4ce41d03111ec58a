"""When a drafted token pays: what a batch row costs on this machine, measured as it decodes.

A decode step costs a fixed part (reading the weights, the graph, the threads' handover) and a
part per batch row. A drafted token costs one row whether it is kept or not; a kept one saves
the sequence a later row and its share of a later step's fixed part (with `n` sequences decoding,
1/n of it). Drafting pays when

    kept share x (per_row + fixed / n) > per_row

On a GPU a row is nearly free and nearly any draft pays; on a small CPU a row of a tiny model
costs ~40 % of a one-row step (SmolLM2-135M on 2 cores: 10.7 ms for 1 row, +4.3 ms a row), so a
lone sequence must keep 40 % of its drafts, and four decoding together 73 %: drafts with fewer
kept tokens slow every sequence of the batch. The engine times its decode steps that evaluate no
prompt and fits the two parts by least squares over the row counts seen (ngram.py asks the
break-even share before each draft).
"""

from __future__ import annotations

MAX_ROWS = 64  # steps with more rows than this are not decode steps worth fitting
SMOOTHING = 0.1  # weight of a new timing in a row count's running mean
PRIOR_ROW_SHARE = 0.4  # per_row / (fixed + per_row) until two row counts are measured: a CPU's


class RowCost:
    """The running mean time of a decode step by its row count, and the line through them."""

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}

    def observed(self, rows: int, seconds: float) -> None:
        if not 0 < rows <= MAX_ROWS:
            return
        mean = self._seconds.get(rows)
        self._seconds[rows] = seconds if mean is None else mean + SMOOTHING * (seconds - mean)

    def fitted(self) -> tuple[float, float]:
        """(fixed, per_row) of a step, in seconds (in shares of a one-row step before measured)."""
        if len(self._seconds) < 2:
            return 1 - PRIOR_ROW_SHARE, PRIOR_ROW_SHARE
        n = len(self._seconds)
        mean_rows = sum(self._seconds) / n
        mean_seconds = sum(self._seconds.values()) / n
        spread = sum((rows - mean_rows) ** 2 for rows in self._seconds)
        covary = sum((rows - mean_rows) * (s - mean_seconds) for rows, s in self._seconds.items())
        per_row = max(0.0, covary / spread)
        return max(0.0, mean_seconds - per_row * mean_rows), per_row

    def break_even(self, sequences: int) -> float:
        """The share of drafted tokens that must be kept for drafting to pay, with `sequences`
        decoding in the step (0.0: rows are free, any draft pays)."""
        fixed, per_row = self.fitted()
        if per_row <= 0:
            return 0.0
        return per_row / (per_row + fixed / max(1, sequences))
