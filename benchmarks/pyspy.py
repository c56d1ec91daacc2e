"""Reading ``py-spy record --format raw`` output: where the sampled time went, by function (self and inclusive)."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
PATH_MARKERS = (
    "site-packages/",
    "python3.11/",
    "python3.12/",
    "python3.13/",
    "runtime_resources/",
    f"{REPO}/",
)


def short_frame(frame: str) -> str:
    """``function (module path tail)`` without the line number, so a function's samples add up."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in PATH_MARKERS:
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('function')} ({path})"


def summarise_collapsed(
    collapsed: str,
    rate_hz: float,
    top: int = 30,
    within: str | None = None,
    focus: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Self and inclusive shares (and sampled seconds) of the stacks in py-spy's collapsed output.

    ``within``: keep only stacks holding a frame that contains this text (e.g. one thread's entry point).
    ``focus``: also report every function whose frame contains one of these texts, however small its share.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [short_frame(f) for f in stack.split(";") if "(" in f]
        if not frames or (within and not any(within in f for f in frames)):
            continue
        count = int(count_text)
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def entry(frame: str, count: int) -> list[Any]:
        return [frame, round(100 * count / max(total, 1), 1), round(count / rate_hz, 2)]

    return {
        "samples": total,
        "sampled_s": round(total / rate_hz, 2),
        "columns": ["function", "percent", "seconds"],
        "self": [entry(f, n) for f, n in self_counts.most_common(top)],
        "inclusive": [entry(f, n) for f, n in inclusive.most_common(top * 2)],
        "focus": [entry(f, n) for f, n in inclusive.most_common() if any(text in f for text in focus)],
    }
