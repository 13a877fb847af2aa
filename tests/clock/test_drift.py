"""Clock drift estimators: audio-vs-video drift from offsets, and a track's rate from arrivals."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from crossmodald.clock.drift import DriftEstimator, RateEstimator

NS = 1_000_000_000


def _offsets(
    drift_ppm: float, seconds: float, hop_s: float, rng: np.random.Generator
) -> Iterator[tuple[int, float]]:
    """Offsets of a pattern stream whose audio clock runs ``drift_ppm`` fast: the audio lead
    falls by drift_ppm * 1e-3 ms per second; flash offsets are exact to < 0.5 ms."""
    for t in np.arange(0.0, seconds, hop_s):
        yield round(t * NS), 40.0 - drift_ppm * 1e-3 * t + float(rng.uniform(-0.5, 0.5))


@pytest.mark.parametrize("drift_ppm", [100.0, -100.0, 0.0])
def test_drift_within_20ppm_after_60s(drift_ppm: float) -> None:
    rng = np.random.default_rng(int(drift_ppm) + 1000)
    est = DriftEstimator()
    for media_ns, lead in _offsets(drift_ppm, 60.0, 0.5, rng):
        est.add(media_ns, lead)
    result = est.estimate()
    assert result is not None
    assert abs(result.ppm - drift_ppm) < 20.0
    assert 0 < result.uncertainty_ppm < 20.0
    assert result.span_s == pytest.approx(59.5)


def test_no_estimate_before_enough_span() -> None:
    est = DriftEstimator(min_span_s=20.0)
    for t in range(10):
        est.add(t * NS, 1.0)
    assert est.estimate() is None


def test_outliers_are_rejected() -> None:
    rng = np.random.default_rng(1)
    est = DriftEstimator()
    for i, (media_ns, lead) in enumerate(_offsets(100.0, 60.0, 0.5, rng)):
        est.add(media_ns, lead + (300.0 if i % 17 == 5 else 0.0))
    result = est.estimate()
    assert result is not None
    assert result.rejected >= 6
    assert abs(result.ppm - 100.0) < 20.0


def test_horizon_forgets_old_points() -> None:
    est = DriftEstimator(horizon_s=30.0, min_span_s=10.0)
    # 60 s of +500 ppm, then 30 s of 0 ppm: only the last 30 s remain.
    for t in np.arange(0, 60, 0.5):
        est.add(round(t * NS), -0.5 * t)
    for t in np.arange(60, 91, 0.5):
        est.add(round(t * NS), -30.0)
    result = est.estimate()
    assert result is not None
    assert abs(result.ppm) < 1.0
    assert len(est) <= 62


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="horizon_s"):
        DriftEstimator(horizon_s=0)
    with pytest.raises(ValueError, match="finite"):
        DriftEstimator().add(0, float("nan"))


@pytest.mark.parametrize("rate_ppm", [250.0, -80.0])
def test_rate_estimator_from_jittery_arrivals(rate_ppm: float) -> None:
    rng = np.random.default_rng(2)
    est = RateEstimator()
    origin_ns = 5 * NS
    for i in range(60 * 50):  # 20 ms packets for 60 s
        arrival_s = i * 0.02
        pts_ns = round(arrival_s * (1 + rate_ppm * 1e-6) * NS)
        # Delivery only ever adds delay: 1 ms base plus up to 30 ms of jitter.
        delay_ns = round((0.001 + rng.exponential(0.005)) * NS)
        est.add(pts_ns, origin_ns + round(arrival_s * NS) + delay_ns)
    result = est.estimate()
    assert result is not None
    assert abs(result.ppm - rate_ppm) < 20.0


def _reference_estimate(points: list[tuple[int, float]]) -> tuple[float, float, int, int] | None:
    """The estimate as the estimator made it before its points moved to numpy buffers."""
    from crossmodald.clock.drift import robust_line_fit

    if len(points) < 8:
        return None
    arr = np.asarray(points, dtype=np.float64)
    t_s = (arr[:, 0] - arr[:, 0].min()) / 1e9
    if float(np.ptp(t_s)) < 20.0:
        return None
    fit = robust_line_fit(t_s, arr[:, 1], reject_sigma=4.0, min_residual=2.0)
    if fit is None or fit.used < 8 or fit.span < 20.0:
        return None
    return (-fit.slope * 1e3, fit.slope_se * 1e3, fit.used, fit.rejected)


def test_buffers_give_the_estimates_of_a_plain_list() -> None:
    # Points live in numpy buffers that drop from the front (horizon, max_points) and compact
    # or grow at the end; every estimate must equal one made from the plain list of points.
    rng = np.random.default_rng(7)
    est = DriftEstimator(horizon_s=60.0, max_points=100)
    points: list[tuple[int, float]] = []
    for i in range(1500):
        t_ns = i * 250_000_000 + int(rng.integers(0, 1000))
        lead = 40.0 - 3e-5 * i + float(rng.normal(0, 0.4)) + (15.0 if i % 41 == 0 else 0.0)
        est.add(t_ns, lead)
        points.append((t_ns, lead))
        points = points[-100:]
        points = [p for p in points if p[0] >= t_ns - 60 * 1_000_000_000]
        if i == 900:
            est.reset()
            points = []
        assert len(est) == len(points)
        got = est.estimate()
        want = _reference_estimate(points)
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert (got.ppm, got.uncertainty_ppm, got.points, got.rejected) == want
