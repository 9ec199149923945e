"""Sweep results (helper/sweep_results.py): the Pareto front and its plot."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pd = pytest.importorskip("pandas")

from helper.sweep_results import pareto_front, pareto_plot  # noqa: E402


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_fastest_first():
    points = [(2.0, 94.8), (3.0, 94.8), (3.03, 93.0), (1.5, 94.4), (2.9, 92.0), (1.0, 96.2)]
    assert pareto_front(points) == [(3.03, 93.0), (3.0, 94.8), (1.0, 96.2)]
    assert pareto_front([(2.0, 90.0), (2.0, 91.0)]) == [(2.0, 91.0)]  # the same speed: the better one


def test_the_plot_takes_completed_trials_with_a_report(tmp_path):
    plan = SimpleNamespace(name="s", constraints=[("ratio.throughput", ">=", 2.0)], cfg=None)
    trials = pd.DataFrame(
        {
            "state": ["complete", "complete", "pruned", "complete"],
            "shape": ["2-layer", "3-layer", "2-layer", None],
            "test/acc": [0.948, 0.948, 0.92, 0.93],
            "teacher.acc": [0.962] * 4,
            "ratio.throughput": [3.0, 2.02, 2.9, None],  # the last: a run without a report
        }
    )
    assert pareto_plot(plan, trials, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
    assert not pareto_plot(plan, trials[trials["state"] == "pruned"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
