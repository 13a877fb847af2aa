"""Clock drift from timed measurements: audio-vs-video drift and a track's clock rate error.

Both estimators are plain synchronous classes (no asyncio, no torch): measurements go in by
:meth:`add`, an estimate comes out of :meth:`estimate`. They fit a straight line by least squares
over a sliding horizon, rejecting outliers by the median absolute deviation of the residuals, and
report the slope in parts per million with its standard error.

Signs:

* :class:`DriftEstimator`: positive ppm = the audio clock runs fast against the video clock.
  Audio events are then stamped later and later relative to the video, so the measured
  ``audio_lead_ms`` (ITU-R BT.1359 sign, positive = audio ahead) *decreases* over media time by
  ``drift_ppm * 1e-3`` ms per second.
* :class:`RateEstimator`: positive ppm = the track's pts advance faster than the daemon's
  monotonic clock (its clock runs fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_NS_PER_S = 1_000_000_000
# Scale of the median absolute deviation to a normal standard deviation.
_MAD_TO_SIGMA = 1.4826

F64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class DriftEstimate:
    """A fitted clock drift.

    Attributes:
        ppm: The drift in parts per million (sign: see the module docstring).
        uncertainty_ppm: One standard error of ``ppm``.
        span_s: Media time covered by the points used.
        points: Points used after outlier rejection.
        rejected: Points rejected as outliers.
    """

    ppm: float
    uncertainty_ppm: float
    span_s: float
    points: int
    rejected: int


@dataclass(frozen=True, slots=True)
class _Fit:
    slope: float
    intercept: float
    slope_se: float
    used: int
    rejected: int
    span: float


def _median(values: F64Array) -> float:
    """``np.median`` of a non-empty finite 1-D array, the same value, without its overhead.

    np.median spends most of its ~15 us per call on argument handling and NaN checks, and the
    drift fit takes two per iteration for every window. The middle element(s) by partition and
    the mean of two as ``(a + b) / 2`` are what np.median computes.
    """
    n = len(values)
    half = n // 2
    if n % 2:
        return float(np.partition(values, half)[half])
    part = np.partition(values, (half - 1, half))
    return float((part[half - 1] + part[half]) / 2.0)


def robust_line_fit(
    x: F64Array,
    y: F64Array,
    *,
    reject_sigma: float,
    min_residual: float,
    iterations: int = 3,
) -> _Fit | None:
    """Least-squares line y = a*x + b with iterative outlier rejection.

    Args:
        x: Abscissae.
        y: Ordinates (same length).
        reject_sigma: Points whose residual exceeds this many robust sigmas are dropped.
        min_residual: Floor of the rejection threshold (in y units), so that near-perfect data
            (sigma ~ 0) does not reject points for rounding noise.
        iterations: Fit/reject rounds.

    Returns:
        The fit, or None when fewer than 3 distinct x values remain.
    """
    keep: npt.NDArray[np.bool_] | None = None  # None: every point (no copy needed)
    fit: _Fit | None = None
    for _ in range(iterations):
        xs, ys = (x, y) if keep is None else (x[keep], y[keep])
        if len(xs) < 3:
            return fit
        span = float(np.ptp(xs))
        if span <= 0.0:
            return fit
        x_mean = float(xs.mean())
        y_mean = ys.mean()
        dx = xs - x_mean
        sxx = float(np.dot(dx, dx))
        slope = float(np.dot(dx, ys - y_mean)) / sxx
        intercept = float(y_mean) - slope * x_mean
        resid = ys - (slope * xs + intercept)
        dof = max(len(xs) - 2, 1)
        slope_se = math.sqrt(float(np.dot(resid, resid)) / dof / sxx)
        rejected = 0 if keep is None else len(x) - len(xs)
        fit = _Fit(slope, intercept, slope_se, len(xs), rejected, span)
        # Outliers pull the least-squares line towards them, so judge residuals against their
        # median rather than against zero.
        centre = _median(resid)
        mad = _median(np.abs(resid - centre))
        threshold = max(reject_sigma * _MAD_TO_SIGMA * mad, min_residual)
        new_keep = np.abs(y - (slope * x + intercept) - centre) <= threshold
        if keep is None:
            if new_keep.all():
                break
        elif np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return fit


class DriftEstimator:
    """Audio-vs-video clock drift from A/V offsets measured over media time.

    Feed every confident offset measurement with :meth:`add`; :meth:`estimate` regresses the
    offsets of the last ``horizon_s`` of media time against that time.

    Args:
        horizon_s: Sliding horizon of media time kept for the fit.
        min_span_s: No estimate until the kept points span at least this much media time
            (a short span turns millisecond offset noise into a large ppm error).
        min_points: No estimate with fewer points.
        reject_sigma: Outlier threshold in robust sigmas of the residuals.
        min_residual_ms: Residuals below this never count as outliers.
        max_points: Hard bound on stored points (oldest dropped first).
    """

    def __init__(
        self,
        *,
        horizon_s: float = 120.0,
        min_span_s: float = 20.0,
        min_points: int = 8,
        reject_sigma: float = 4.0,
        min_residual_ms: float = 2.0,
        max_points: int = 4096,
    ) -> None:
        if horizon_s <= 0:
            raise ValueError(f"DriftEstimator: horizon_s must be positive, got {horizon_s}")
        if not 0 <= min_span_s <= horizon_s:
            raise ValueError(
                f"DriftEstimator: min_span_s must be within 0..horizon_s, got {min_span_s}"
            )
        if min_points < 3:
            raise ValueError(f"DriftEstimator: min_points must be at least 3, got {min_points}")
        if max_points < min_points:
            raise ValueError("DriftEstimator: max_points must be at least min_points")
        self._horizon_ns = round(horizon_s * _NS_PER_S)
        self._min_span_s = min_span_s
        self._min_points = min_points
        self._reject_sigma = reject_sigma
        self._min_residual_ms = min_residual_ms
        self._max_points = max_points
        # The points in arrival order: media ns and offset ms in two arrays, live in
        # [_head, _tail). Appends go at the tail, the horizon and max_points drop from the head;
        # the arrays are compacted (or grown) when the tail reaches the end. This saves building
        # an array from a deque of tuples on every estimate (once per window).
        capacity = min(max_points, 256) * 2
        self._t_ns = np.zeros(capacity, dtype=np.int64)
        self._y_ms = np.zeros(capacity, dtype=np.float64)
        self._head = 0
        self._tail = 0
        self._latest_ns: int | None = None

    def __len__(self) -> int:
        return self._tail - self._head

    def add(self, media_ns: int, audio_lead_ms: float) -> None:
        """Add one measurement: the offset ``audio_lead_ms`` observed at media time ``media_ns``.

        Raises:
            ValueError: If the offset is not finite.
        """
        if not math.isfinite(audio_lead_ms):
            raise ValueError(f"DriftEstimator: offset must be finite, got {audio_lead_ms}")
        if self._tail - self._head >= self._max_points:
            self._head += 1  # the oldest goes, as a bounded deque would drop it
        if self._tail == len(self._t_ns):
            self._make_room()
        self._t_ns[self._tail] = media_ns
        self._y_ms[self._tail] = audio_lead_ms
        self._tail += 1
        if self._latest_ns is None or media_ns > self._latest_ns:
            self._latest_ns = media_ns
        # Points arrive roughly in media order; drop those that fell out of the horizon.
        oldest_ns = self._latest_ns - self._horizon_ns
        t_ns = self._t_ns
        while self._head < self._tail and int(t_ns[self._head]) < oldest_ns:
            self._head += 1

    def _make_room(self) -> None:
        count = self._tail - self._head
        capacity = len(self._t_ns)
        if count * 2 > capacity:
            capacity *= 2
        t_ns = np.zeros(capacity, dtype=np.int64)
        y_ms = np.zeros(capacity, dtype=np.float64)
        t_ns[:count] = self._t_ns[self._head : self._tail]
        y_ms[:count] = self._y_ms[self._head : self._tail]
        self._t_ns, self._y_ms = t_ns, y_ms
        self._head, self._tail = 0, count

    def reset(self) -> None:
        """Forget all points (e.g. after a timeline jump)."""
        self._head = self._tail = 0
        self._latest_ns = None

    def estimate(self) -> DriftEstimate | None:
        """The drift over the horizon, or None while span or points are not enough."""
        if self._tail - self._head < self._min_points:
            return None
        # float64 first, then the difference: the same values as before (exact below 2**53 ns).
        t_f = self._t_ns[self._head : self._tail].astype(np.float64)
        t_s = (t_f - t_f.min()) / _NS_PER_S
        if float(np.ptp(t_s)) < self._min_span_s:
            return None
        fit = robust_line_fit(
            t_s,
            self._y_ms[self._head : self._tail],
            reject_sigma=self._reject_sigma,
            min_residual=self._min_residual_ms,
        )
        if fit is None or fit.used < self._min_points or fit.span < self._min_span_s:
            return None
        # slope is ms of offset per s of media = 1e-3 relative; audio fast => lead decreases.
        return DriftEstimate(
            ppm=-fit.slope * 1e3,
            uncertainty_ppm=fit.slope_se * 1e3,
            span_s=fit.span,
            points=fit.used,
            rejected=fit.rejected,
        )


class RateEstimator:
    """A track's clock rate error: its pts regressed against daemon arrival time.

    Network and scheduling delays only ever add to the arrival time, so the fit uses the lower
    envelope of the delay: per ``bin_s`` of arrival time only the item with the smallest
    ``arrival - pts`` is kept (the least delayed one), then a robust line is fitted to those.

    Args:
        horizon_s: Sliding horizon of arrival time kept.
        bin_s: Width of the bins whose least-delayed item is kept.
        min_span_s: No estimate until the kept bins span this much arrival time.
        min_bins: No estimate with fewer bins.
        max_bins: Hard bound on stored bins.
    """

    def __init__(
        self,
        *,
        horizon_s: float = 120.0,
        bin_s: float = 1.0,
        min_span_s: float = 20.0,
        min_bins: int = 8,
        max_bins: int = 4096,
    ) -> None:
        if horizon_s <= 0 or bin_s <= 0:
            raise ValueError("RateEstimator: horizon_s and bin_s must be positive")
        if min_bins < 3 or max_bins < min_bins:
            raise ValueError("RateEstimator: need 3 <= min_bins <= max_bins")
        self._horizon_ns = round(horizon_s * _NS_PER_S)
        self._bin_ns = round(bin_s * _NS_PER_S)
        self._min_span_s = min_span_s
        self._min_bins = min_bins
        # bin index -> (arrival_ns, pts_ns) of the least delayed item in that bin
        self._bins: dict[int, tuple[int, int]] = {}
        self._max_bins = max_bins
        self._latest_arrival_ns: int | None = None
        self._checked_oldest_key: int | None = None

    def add(self, pts_ns: int, arrival_ns: int) -> None:
        """Add one item's media time and its arrival time on the daemon's monotonic clock."""
        key = arrival_ns // self._bin_ns
        best = self._bins.get(key)
        if best is None or arrival_ns - pts_ns < best[0] - best[1]:
            self._bins[key] = (arrival_ns, pts_ns)
        if self._latest_arrival_ns is None or arrival_ns > self._latest_arrival_ns:
            self._latest_arrival_ns = arrival_ns
        oldest_key = (self._latest_arrival_ns - self._horizon_ns) // self._bin_ns
        if best is not None and oldest_key == self._checked_oldest_key:
            # An existing bin and the same horizon as at the last check: nothing can have
            # become stale or too many (keeps the per-item cost O(1) on live streams).
            return
        self._checked_oldest_key = oldest_key
        if len(self._bins) > self._max_bins or min(self._bins) < oldest_key:
            for stale in sorted(self._bins):
                if stale >= oldest_key and len(self._bins) <= self._max_bins:
                    break
                del self._bins[stale]

    def estimate(self) -> DriftEstimate | None:
        """The rate error in ppm (positive = the track's clock runs fast), or None."""
        if len(self._bins) < self._min_bins:
            return None
        arr = np.asarray(sorted(self._bins.values()), dtype=np.int64)
        arrival_s = (arr[:, 0] - arr[0, 0]).astype(np.float64) / _NS_PER_S
        # pts - arrival, relative, in ms: grows by ppm*1e-3 ms per s when the track runs fast.
        lead_ms = ((arr[:, 1] - arr[0, 1]) - (arr[:, 0] - arr[0, 0])).astype(np.float64) / 1e6
        if float(np.ptp(arrival_s)) < self._min_span_s:
            return None
        fit = robust_line_fit(arrival_s, lead_ms, reject_sigma=4.0, min_residual=1.0)
        if fit is None or fit.used < self._min_bins or fit.span < self._min_span_s:
            return None
        return DriftEstimate(
            ppm=fit.slope * 1e3,
            uncertainty_ppm=fit.slope_se * 1e3,
            span_s=fit.span,
            points=fit.used,
            rejected=fit.rejected,
        )
