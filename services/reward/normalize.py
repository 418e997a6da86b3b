"""Reward normalisation: running mean/std per job, optional whitening, scaling and clipping.

For a job with ``whiten``, each batch of raw scores first updates the job's running statistics
(Welford's algorithm, batches merged with Chan et al.'s parallel update, population variance),
then every score of the batch is whitened with the updated statistics::

    normalized = clip(scale * (raw - mean) / (std + 1e-8), -clip, clip)     # whiten
    normalized = clip(scale * raw, -clip, clip)                             # otherwise

``clip`` 0 means no clipping. The first score of a job whitens to 0 (it is the mean). Without a
job id (a caller who just wants scores) no statistics are read or updated and whitening is off.

Statistics live in this process: replicas of the reward service each keep their own, and a
restart starts them afresh.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.reward.job_settings import JobSettings

logger = logging.getLogger(__name__)

EPS = 1e-8


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (``m2``) of every value seen."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def update(self, values: Sequence[float]) -> None:
        """Merge a batch in (Chan et al.): equal to updating one value at a time."""
        n = len(values)
        if n == 0:
            return
        batch_mean = math.fsum(values) / n
        batch_m2 = math.fsum((v - batch_mean) ** 2 for v in values)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total


def normalize(raw: float, settings: JobSettings, stats: RunningStats | None) -> float:
    """One score through the job's pipeline (``stats`` None: no whitening)."""
    value = raw
    if settings.whiten and stats is not None:
        value = (value - stats.mean) / (stats.std + EPS)
    value *= settings.scale
    if settings.clip > 0:
        value = min(max(value, -settings.clip), settings.clip)
    return value


class Normalizer:
    """Running statistics of the most recent ``max_jobs`` jobs (least recently used go first)."""

    def __init__(self, max_jobs: int = 1024) -> None:
        self._stats: OrderedDict[str, RunningStats] = OrderedDict()
        self._lock = threading.Lock()
        self._max_jobs = max_jobs

    def apply(self, job_id: str, settings: JobSettings, raws: Sequence[float]) -> list[float]:
        """Update ``job_id``'s statistics with ``raws`` (when whitening), then normalise them."""
        if not job_id or not settings.whiten:
            return [normalize(r, settings, None) for r in raws]
        with self._lock:
            stats = self._stats.get(job_id)
            if stats is None:
                stats = self._stats[job_id] = RunningStats()
                while len(self._stats) > self._max_jobs:
                    evicted, _ = self._stats.popitem(last=False)
                    logger.info("dropped the running reward statistics of job %s", evicted)
            self._stats.move_to_end(job_id)
            stats.update(raws)
            return [normalize(r, settings, stats) for r in raws]

    def stats(self, job_id: str) -> RunningStats | None:
        """A copy of ``job_id``'s statistics, or None when it has none."""
        with self._lock:
            stats = self._stats.get(job_id)
            return None if stats is None else RunningStats(stats.count, stats.mean, stats.m2)
