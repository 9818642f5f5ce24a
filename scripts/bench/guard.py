"""The regression guard: `make bench` fails when a figure is much worse than the committed run.

The baseline is docs/benchmarks.json as committed (`git show HEAD:...`), or the file on
disk where it is not committed, read before the run overwrites it. Every number a target
stands on (targets.py) is compared; one more than `TOLERANCE` worse, in its own direction
(a rate lower, a latency or a cost ratio higher), fails the run. A figure that the baseline
lacks is new, not a failure. `--accept` (or BENCH_ACCEPT=1) reports and passes: for a
deliberate change, whose new figures then become the baseline when they are committed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .targets import Figure, figures

TOLERANCE = 0.30


@dataclass(frozen=True)
class Change:
    key: str
    label: str
    baseline: float | None
    now: float
    verdict: str  # "worse", "better", "same", "new"

    @property
    def percent(self) -> float | None:
        """The change from the baseline, in % of it (None when there is none to compare)."""
        if self.baseline is None or self.baseline == 0:
            return None
        return 100 * (self.now - self.baseline) / abs(self.baseline)


def judge(before: Figure, now: Figure, tolerance: float = TOLERANCE) -> str:
    """worse, better or same: worse when `now` has moved the wrong way by more than
    `tolerance` of the baseline (and by more than the figure's slack)."""
    allowed = max(tolerance * abs(before.value), now.slack)
    step = now.value - before.value
    gain = step if now.higher_is_better else -step
    if gain < -allowed:
        return "worse"
    if gain > allowed:
        return "better"
    return "same"


def compare(
    baseline: Mapping[str, Figure], now: Mapping[str, Figure], tolerance: float = TOLERANCE
) -> list[Change]:
    """Each figure measured now against the baseline, in the order of `now`. Figures the
    baseline has and this run lacks (a run of some sections only) are not listed."""
    out: list[Change] = []
    for key, fig in now.items():
        before = baseline.get(key)
        if before is None:
            out.append(Change(key, fig.label, None, fig.value, "new"))
        else:
            out.append(
                Change(key, fig.label, before.value, fig.value, judge(before, fig, tolerance))
            )
    return out


def failures(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.verdict == "worse"]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def table(changes: list[Change]) -> str:
    """A plain-text table of every figure: baseline, now, change %, verdict."""
    rows = [("figure", "baseline", "now", "change %", "")]
    for c in changes:
        pct = "-" if c.percent is None else f"{c.percent:+.0f}%"
        mark = {"worse": "WORSE", "new": "new", "better": "better"}.get(c.verdict, "")
        rows.append((c.label, _num(c.baseline), _num(c.now), pct, mark))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 5)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def load_baseline(path: Path, root: Path) -> tuple[dict[str, Any], str] | None:
    """The results at `path` as committed at HEAD, else as on disk, else None; with where
    they were read from."""
    try:
        rel: Path | None = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = None
    if rel is not None:
        try:
            shown = subprocess.run(
                ["git", "show", f"HEAD:{rel.as_posix()}"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if shown.returncode == 0:
                return dict(json.loads(shown.stdout)), f"{rel.as_posix()} at HEAD"
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        return dict(json.loads(path.read_text())), str(path)
    except (OSError, ValueError):
        return None


def check(
    results: dict[str, Any],
    baseline: tuple[dict[str, Any], str] | None,
    accept: bool,
) -> tuple[int, str]:
    """The exit status and what to print (to stderr when the status is not 0)."""
    if baseline is None:
        return 0, "Regression guard: no baseline to compare with."
    before, source = baseline
    if before.get("mode") != results.get("mode"):
        return 0, (
            f"Regression guard: not compared ({source} is a {before.get('mode')} run,"
            f" this is a {results.get('mode')} run)."
        )
    changes = compare(figures(before, lenient=True), figures(results))
    bad = failures(changes)
    limit = f"{TOLERANCE * 100:.0f}%"
    head = f"Against {source} ({before.get('machine', {}).get('date', '?')}):"
    if not bad:
        return 0, f"{head} no figure more than {limit} worse.\n{table(changes)}"
    named = ", ".join(c.label for c in bad)
    if results.get("mode") == "quick":
        return 0, (
            f"{head} {len(bad)} figure(s) more than {limit} worse ({named}); a --quick run"
            f" is one small repetition, so it reports and does not fail.\n{table(changes)}"
        )
    if accept:
        return 0, (
            f"{head} {len(bad)} figure(s) more than {limit} worse ({named}), accepted"
            f" (--accept or BENCH_ACCEPT=1).\n{table(changes)}"
        )
    return 1, (
        f"REGRESSION: {len(bad)} figure(s) more than {limit} worse than {source}: {named}.\n"
        f"{table(changes)}\n"
        "If the change is deliberate, rerun with BENCH_ACCEPT=1 (or --accept) and commit"
        " the new docs/benchmarks.json; on a busy machine, rerun when it is quiet."
    )
