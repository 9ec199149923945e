"""A sweep's results, from Optuna's storage alone (every machine's trials): the table of trials (trials.csv), the
summary over seeds (summary.csv, summary.md), the Pareto plot (pareto.png) and the best configuration (best.yaml), and
the one progress line per finished trial."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from helper.config import load_config, save_config
from helper.sweep import Plan, feasible, finished, override, params_of

RATIOS = ("ratio.acc", "ratio.throughput", "ratio.model_bytes")  # the summary's student / teacher columns


def table(plan: Plan, study):
    """One row per finished trial: its values, state, objective, metrics, report figures, shape, times, error."""
    import pandas as pd

    rows = []
    retried = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("retry_history")]
    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in retried}  # the trial each retry runs again
    for t in finished(study):
        a, params = t.user_attrs, params_of(t)
        error = a.get("error")
        if error is None and t.state.name == "FAIL":  # failed by the heartbeat check: its worker stopped mid-trial
            error = "its worker stopped (no heartbeat)"
        if t.number in retried_as:  # that, or interrupted
            error = f"{error}; run again as trial {retried_as[t.number]}"
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                **{k: params.get(k) for k in plan.keys()},
                "objective": t.value,
                "feasible": feasible(t) if t.state.name == "COMPLETE" else None,
                **a.get("metrics", {}),
                **a.get("figures", {}),
                "shape": a.get("shape"),
                "seconds": a.get("seconds"),
                "cpu_seconds": a.get("cpu_seconds"),
                "worker": f"{a.get('host', '?')}/{a.get('worker', '?')}",
                "retry_of": t.system_attrs.get("failed_trial"),
                "error": error,
                "note": a.get("note"),  # why a trial stopped before training (distill.require)
                "run_dir": a.get("run_dir"),
            }
        )
    return pd.DataFrame(rows)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]  # no NaN
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(plan: Plan, trials) -> list[dict]:
    """Per configuration (the values but the seed) over its completed trials: n, mean and sd of the objective and of
    the test metrics, the mean ratios, whether all meet the constraints; sorted: feasible first, best objective."""
    if trials.empty:
        return []
    done = trials[trials["state"] == "complete"]
    keys = [k for k in plan.keys() if k != "seed"]
    out = []
    for config, group in done.groupby(keys, dropna=False, sort=False) if keys else [((), done)]:
        config = config if isinstance(config, tuple) else (config,)
        row: dict[str, Any] = {**dict(zip(keys, config)), "n": len(group), "seeds": sorted(group["seed"].tolist())}
        metrics = ["objective", *sorted(c for c in group.columns if c.startswith("test/"))]
        for m in metrics:
            row[f"{m} mean"], row[f"{m} sd"] = _mean_sd(group[m].astype(float).tolist())
        for r in RATIOS:
            if r in group:
                row[r] = _mean_sd(group[r].astype(float).tolist())[0]
        row["feasible"] = bool(group["feasible"].all())
        row["cpu_seconds"] = float(group["cpu_seconds"].sum())
        row["trials"] = group["trial"].tolist()
        out.append(row)
    sign = -1 if plan.cfg.objective.direction == "maximize" else 1
    out.sort(key=lambda r: (not r["feasible"], sign * r["objective mean"]))
    return out


def summary_markdown(plan: Plan, rows: list[dict]) -> str:
    if not rows:
        return "no completed trials\n"
    keys = [k for k in plan.keys() if k != "seed"]
    tests = [k.removesuffix(" mean") for k in rows[0] if k.startswith("test/") and k.endswith(" mean")]
    ratios = [r for r in RATIOS if r in rows[0]]
    head = [*keys, "n", plan.cfg.objective.metric, *tests, *ratios, "constraints met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys] + [str(r["n"])]
        cells += [f"{r['objective mean']:.4f} ± {r['objective sd']:.4f}"]
        cells += [f"{100 * r[f'{t} mean']:.2f} ± {100 * r[f'{t} sd']:.2f}" for t in tests]
        cells += [f"{r[x]:.3f}" for x in ratios] + [("yes" if r["feasible"] else "no")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (speed, accuracy) points no other point beats on both, fastest first."""
    front, best = [], -float("inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def pareto_plot(plan: Plan, trials, path: Path) -> bool:
    """Test accuracy (else the objective) against the student's throughput as a multiple of the teacher's (both timed
    in the same report, so trials timed under different loads compare), one colour per student shape, the teacher at
    1x, the Pareto front (teacher included) drawn. False when no completed trial has a report."""
    if trials.empty or "ratio.throughput" not in trials:
        return False
    from matplotlib.figure import Figure

    done = trials[(trials["state"] == "complete") & trials["ratio.throughput"].notna()]
    if done.empty:
        return False
    y_key = "test/acc" if "test/acc" in done else plan.cfg.objective.metric
    teacher_y = 100 * done["teacher.acc"].mean()
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    for shape, group in done.groupby(done["shape"].fillna("student")):
        ax.scatter(group["ratio.throughput"], 100 * group[y_key], label=str(shape), alpha=0.8)
    ax.scatter([1.0], [teacher_y], marker="*", s=250, color="black", label="teacher")
    front = pareto_front([*zip(done["ratio.throughput"], 100 * done[y_key]), (1.0, teacher_y)])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey", linestyle="--", label="front")
    for x in sorted({c[2] for c in plan.constraints if c[0] == "ratio.throughput"}):
        ax.axvline(x, color="red", linewidth=0.8, label=f"{x:g}x the teacher")
    ax.set_xlabel("student throughput / teacher's (batch 32, CPU, timed together)")
    ax.set_ylabel(f"{y_key} (%)")
    ax.set_title(f"sweep {plan.name}: {len(done)} runs")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return True


def write_best(plan: Plan, study, rows: list[dict]) -> Path | None:
    """The best configuration meeting the constraints (the summary's first), as a YAML file its stage runs as is."""
    if not rows or not rows[0]["feasible"]:
        return None
    trial = study.get_trials(deepcopy=False)[rows[0]["trials"][0]]
    step = plan.steps[-1]
    overrides = [o for o in trial.user_attrs["overrides"] if not o.startswith("logger.")]
    overrides += [override("logger.output_dir", str(plan.out.resolve())), override("logger.run_name", "best")]
    cfg = load_config(step.cls, step.config, overrides)
    path = plan.out / "best.yaml"
    save_config(cfg, path)
    return path


def write_results(plan: Plan, study) -> dict:
    """trials.csv, summary.csv, summary.md, pareto.png and best.yaml in the sweep's directory; prints the summary."""
    import pandas as pd

    trials = table(plan, study)
    plan.out.mkdir(parents=True, exist_ok=True)
    trials.to_csv(plan.out / "trials.csv", index=False)
    rows = summary(plan, trials)
    pd.DataFrame(rows).to_csv(plan.out / "summary.csv", index=False)
    text = summary_markdown(plan, rows)
    (plan.out / "summary.md").write_text(text)
    plotted = pareto_plot(plan, trials, plan.out / "pareto.png")
    best = write_best(plan, study, rows)
    states = trials["state"].value_counts().to_dict() if not trials.empty else {}
    cpu = float(trials["cpu_seconds"].sum()) if not trials.empty else 0.0
    print(text, end="")
    print(
        f"sweep {plan.name}: {', '.join(f'{n} {s}' for s, n in states.items()) or 'no trials'}; trials' CPU time "
        f"{cpu:.0f} s ({cpu / 3600:.2f} h); results in {plan.out}/ "
        f"(trials.csv, summary.md{', pareto.png' if plotted else ''})"
    )
    if best is not None:
        print(f"best configuration: python {plan.steps[-1].script} --config {best}")
    return {"trials": trials, "summary": rows, "best": best}
