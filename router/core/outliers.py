"""TTFT outlier detection: a replica far slower than the fleet's median is taken out.

Pure: the proxy reports each first token with the time it came; a verdict is a reason to eject.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTLIER_EWMA = 0.2  # weight of the newest TTFT in a replica's moving average
OUTLIER_MIN_SAMPLES = 10  # no verdict on a replica before this many first tokens
MIN_FLEET = 3  # a median of fewer replicas says nothing about which one is slow
MEDIAN_EVERY = 1.0  # seconds between recomputations of the fleet's median: it moves slowly


@dataclass(slots=True)
class TtftAverage:
    seconds: float
    samples: int = 1


class OutlierDetector:
    """Moving averages of time to first token per replica, judged against the fleet's median."""

    def __init__(self, factor: float, min_ttft: float) -> None:
        self.factor = factor  # 0 disables detection
        self.min_ttft = min_ttft
        self.averages: dict[str, TtftAverage] = {}
        self._median = 0.0
        self._median_at = float("-inf")

    def observe(self, url: str, seconds: float, now: float) -> str | None:
        """Record one first token; returns why `url` should be ejected, or None."""
        if not self.factor:
            return None
        average = self.averages.get(url)
        if average is None:
            average = self.averages[url] = TtftAverage(seconds)
        else:
            average.seconds += OUTLIER_EWMA * (seconds - average.seconds)
            average.samples += 1
        if average.samples < OUTLIER_MIN_SAMPLES or average.seconds < self.min_ttft:
            return None
        if now - self._median_at > MEDIAN_EVERY:
            settled = sorted(
                a.seconds for a in self.averages.values() if a.samples >= OUTLIER_MIN_SAMPLES
            )
            self._median = settled[len(settled) // 2] if len(settled) >= MIN_FLEET else 0.0
            self._median_at = now
        if self._median and average.seconds > self.factor * self._median:
            return (
                f"slow: time to first token {average.seconds:.2f}s, fleet median "
                f"{self._median:.2f}s"
            )
        return None

    def forget(self, url: str) -> None:
        """A replica ejected, readmitted or gone starts afresh."""
        self.averages.pop(url, None)

    def average(self, url: str) -> float | None:
        average = self.averages.get(url)
        return average.seconds if average is not None else None
