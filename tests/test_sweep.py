"""Sweeps (helper/sweep.py, sweep.py): two workers share a search without running a trial twice, a killed sweep
started again runs only the unfinished trials, and bad sweep files are one line each before any trial."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from bert.errors import UserError
from tests.conftest import ROOT, run_overrides

optuna = pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from helper.sweep import load_plan, open_storage, open_study, params_of, requeue  # noqa: E402
from sweep import main  # noqa: E402


def write_sweep(tmp_path: Path, clf_csv, teacher: str, **sections) -> Path:
    """A sweep of tiny distillation runs (a 1-layer student cut from the tiny teacher) on the clf_csv splits."""
    base = dict(o.split("=", 1) for o in run_overrides(tmp_path, clf_csv))
    base = {k: yaml.safe_load(v) for k, v in base.items() if not k.startswith("logger.output_dir")}
    base.update(
        {
            "teacher.name": teacher,
            "student.init_from_teacher": {"layers": [0], "model": None},
            "distill.report": False,
            "trainer.checkpoint_every_n_steps": None,
        }
    )
    sweep = {"steps": [{"script": "distillation_ms.py"}], "overrides": base, "output_dir": str(tmp_path / "sweeps")}
    sweep.update(sections)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def trials_of(db: Path, name: str = "sweep") -> list:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def states_of(db: Path) -> list[str]:
    """The trials' states, [] while the sweep is still creating its storage."""
    try:
        return [t.state.name for t in trials_of(db)]
    except Exception:  # noqa: BLE001  tables or study not there yet
        return []


def test_two_workers_finish_a_six_trial_search_without_running_a_trial_twice(tmp_path, clf_csv, tiny_model_dir):
    space = {"optim.lr": {"low": 1e-5, "high": 1e-2, "log": True}, "distill.adaptors": {"choices": [["HardCE"]]}}
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, search={"n_trials": 6, "space": space, "pruner": "none"})
    main([str(path), "--workers", "2"])
    out = tmp_path / "sweeps" / "sweep"
    trials = trials_of(out / "optuna.db")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    runs = sorted(p.name for p in (out / "trials").iterdir() if p.is_dir())
    assert runs == [f"t{n:04d}" for n in range(6)]  # one run per trial, none twice
    assert all((out / "trials" / r / "metrics.json").is_file() for r in runs)
    assert {t.user_attrs["worker"] for t in trials} == {"w0", "w1"}
    assert len({t.params["optim.lr"] for t in trials}) == 6  # workers sampling at once draw different values
    table = (out / "trials.csv").read_text().splitlines()
    assert len(table) == 7 and "optim.lr" in table[0] and "cpu_seconds" in table[0]
    assert (out / "best.yaml").is_file() and "| optim.lr |" in (out / "summary.md").read_text()


def test_the_search_gives_optuna_each_trials_constraints(tmp_path, clf_csv, tiny_model_dir):
    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    search = {"n_trials": 2, "space": space, "pruner": "none"}
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, search=search, constraints=["val/acc >= 2", "val/acc <= 2"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([str(path)])
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # no deprecated Optuna argument of ours
    trials = trials_of(tmp_path / "sweeps" / "sweep" / "optuna.db")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    for t in trials:  # what TPE steers by: > 0 unmet, <= 0 met
        acc = t.user_attrs["metrics"]["val/acc"]
        assert t.constraints == pytest.approx({"val/acc >= 2": 2 - acc, "val/acc <= 2": acc - 2})


def test_search_trials_may_be_pruned_the_best_configurations_run_again_with_the_other_seeds_never(
    tmp_path, clf_csv, tiny_model_dir, monkeypatch
):
    import helper.sweep as sweep_module

    class PruneFromTrial1(optuna.pruners.BasePruner):  # would stop every trial after the first at its first report
        def prune(self, study, trial) -> bool:
            return trial.number >= 1

    parts = sweep_module.study_parts
    monkeypatch.setattr(sweep_module, "study_parts", lambda plan, n=0: (parts(plan, n)[0], PruneFromTrial1()))
    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    search = {"n_trials": 2, "space": space, "sampler": "random", "confirm": 1}
    main([str(write_sweep(tmp_path, clf_csv, tiny_model_dir, search=search, seeds=[0, 1, 2]))])
    out = tmp_path / "sweeps" / "sweep"
    trials = trials_of(out / "optuna.db")
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    assert len(trials[1].intermediate_values) == 1  # stopped at its first validation
    confirmations = trials[2:]
    assert [json.loads(t.user_attrs["point"])["seed"] for t in confirmations] == [1, 2]
    lr = trials[0].params["optim.lr"]  # the one search trial completed: the best
    assert all(t.params["optim.lr"] == lr and not t.intermediate_values for t in confirmations)
    summary = {float(r["optim.lr"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary[lr]["n"] == "3" and summary[lr]["seeds"] == "[0, 1, 2]"


def test_every_worker_takes_confirmations_when_the_search_is_done(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    import helper.sweep as sweep_module

    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    search = {"n_trials": 1, "space": space, "sampler": "random", "confirm": 1}
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, search=search, seeds=[0, 1, 2, 3, 4])
    with monkeypatch.context() as patch:
        patch.setattr(sweep_module, "enqueue_confirmations", lambda plan, study: 0)
        main([str(path)])  # the search alone
    enqueue = sweep_module.enqueue_confirmations

    def late(plan, study):  # both workers have found nothing waiting before either enqueues
        time.sleep(1)
        return enqueue(plan, study)

    monkeypatch.setattr(sweep_module, "enqueue_confirmations", late)
    main([str(path), "--workers", "2"])  # one enqueues the confirmations, both run them
    confirmations = trials_of(tmp_path / "sweeps" / "sweep" / "optuna.db")[1:]
    assert [t.state.name for t in confirmations] == ["COMPLETE"] * 4
    assert {t.user_attrs["worker"] for t in confirmations} == {"w0", "w1"}


def test_a_pruned_confirmation_runs_again(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    import helper.sweep as sweep_module

    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    search = {"n_trials": 1, "space": space, "sampler": "random", "confirm": 1}
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, search=search, seeds=[0, 1])
    with monkeypatch.context() as patch:
        patch.setattr(sweep_module, "enqueue_confirmations", lambda plan, study: 0)
        main([str(path)])  # the search alone
    db = tmp_path / "sweeps" / "sweep" / "optuna.db"
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{db}")
    config = {"optim.lr": study.trials[0].params["optim.lr"]}
    point = json.dumps({"confirm": config, "seed": 1}, sort_keys=True)
    distributions = {"optim.lr": study.trials[0].distributions["optim.lr"], "seed": CategoricalDistribution([0, 1])}
    pruned = optuna.trial.create_trial(
        state=TrialState.PRUNED, params={**config, "seed": 1}, distributions=distributions, user_attrs={"point": point}
    )  # as sweeps pruned confirmations before they ran to the end
    study.add_trial(pruned)
    main([str(path)])
    trials = trials_of(db)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[2].user_attrs["point"] == point and params_of(trials[2]) == params_of(pruned)


def test_a_sweep_file_given_more_grid_values_and_seeds_runs_only_the_new_points(tmp_path, clf_csv, tiny_model_dir):
    db = tmp_path / "sweeps" / "sweep" / "optuna.db"
    main([str(write_sweep(tmp_path, clf_csv, tiny_model_dir, grid={"optim.lr": [1e-3]}, seeds=[0]))])
    first = trials_of(db)[0]
    main([str(write_sweep(tmp_path, clf_csv, tiny_model_dir, grid={"optim.lr": [1e-3, 1e-4]}, seeds=[0, 1]))])
    trials = trials_of(db)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4 and trials[0].datetime_complete == first.datetime_complete
    points = [(params_of(t)["optim.lr"], params_of(t)["seed"]) for t in trials]
    assert sorted(points) == [(1e-4, 0), (1e-4, 1), (1e-3, 0), (1e-3, 1)] and points[0] == (1e-3, 0)


def test_a_grid_narrowed_by_an_override_leaves_the_other_values_trials_waiting(tmp_path, clf_csv, tiny_model_dir):
    recipes = {"fast": {"optim.lr": 1e-3}, "slow": {"optim.lr": 1e-4}}
    path = str(write_sweep(tmp_path, clf_csv, tiny_model_dir, recipes=recipes, grid={"recipe": ["fast", "slow"]}))
    db = tmp_path / "sweeps" / "sweep" / "optuna.db"
    plan = load_plan(path)
    plan.out.mkdir(parents=True)
    open_study(plan, open_storage(f"sqlite:///{db}", 30))  # both points enqueued, none run (a sweep stopped early)
    main([path, "grid.recipe=[slow]"])
    trials = trials_of(db)
    assert [(params_of(t)["recipe"], t.state.name) for t in trials] == [("fast", "WAITING"), ("slow", "COMPLETE")]
    main([path])
    assert [t.state.name for t in trials_of(db)] == ["COMPLETE", "COMPLETE"]


def test_results_only_reads_the_storage_as_it_is(tmp_path, clf_csv, tiny_model_dir):
    path = str(write_sweep(tmp_path, clf_csv, tiny_model_dir, grid={"optim.lr": [1e-3]}, seeds=[0]))
    with pytest.raises(UserError, match=r"--results: sweep 'sweep' has not run"):
        main([path, "--results"])
    main([path])
    main([path, "seeds=[0, 1]", "--results"])  # a new seed is not enqueued by reading the results
    assert len(trials_of(tmp_path / "sweeps" / "sweep" / "optuna.db")) == 1


def test_retry_failed_runs_the_failed_trials_points_again(tmp_path, clf_csv, tiny_model_dir):
    # 99 neurons: more than the tiny teacher's 37 per layer, which only a run finds (the sweep loads no model)
    grid = {"student.init_from_teacher.intermediate_size": [16, 99]}
    path = str(write_sweep(tmp_path, clf_csv, tiny_model_dir, grid=grid, seeds=[0]))
    db = tmp_path / "sweeps" / "sweep" / "optuna.db"
    main([path])
    trials = trials_of(db)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[0].user_attrs["shape"] == "1-layer, hidden 32, FFN 16"  # one Pareto colour per shape
    assert "intermediate_size: 99 is more than the 37 neurons per layer" in trials[1].user_attrs["error"]
    main([path])  # a failed trial is finished: not run again
    assert len(trials_of(db)) == 2
    main([path, "--retry-failed"])
    trials = trials_of(db)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert trials[2].user_attrs["point"] == trials[1].user_attrs["point"]


def test_the_table_names_the_trial_that_ran_each_stopped_one_again(tmp_path, clf_csv, tiny_model_dir):
    """A trial interrupted, its retry's worker killed, the retry of that finished: each row names its own next run."""
    from helper.sweep_results import table

    plan = load_plan(write_sweep(tmp_path, clf_csv, tiny_model_dir, grid={"distill.adaptors": [["HardCE"]]}))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}", study_name="sweep")
    first = study.ask()
    first.set_user_attr("point", json.dumps({"distill.adaptors": ["HardCE"], "seed": 0}))
    requeue(study, first, "w0")  # Ctrl-C: trial 1 runs it again; then its worker dies (no error of its own)
    study._storage.set_trial_state_values(study.get_trials()[1]._trial_id, TrialState.RUNNING)
    study._storage.set_trial_state_values(study.get_trials()[1]._trial_id, TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.get_trials()[1])  # trial 2: the heartbeat's retry
    assert [t.system_attrs["retry_history"] for t in study.get_trials()[1:]] == [[0], [0, 1]]
    rows = table(plan, study)
    assert list(rows["error"]) == [
        "interrupted (Ctrl-C); run again as trial 1",
        "its worker stopped (no heartbeat); run again as trial 2",
    ]  # trial 2 waits: not finished, no row
    assert list(rows["retry_of"].fillna(-1)) == [-1, 0]  # the first trial of each chain


def test_tpe_models_the_results_after_search_startup_trials_random_draws(tmp_path, clf_csv, tiny_model_dir):
    from helper.sweep import study_parts

    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    for startup in (10, 3):
        search = {"n_trials": 6, "space": space, **({"startup_trials": startup} if startup != 10 else {})}
        sampler, _ = study_parts(load_plan(write_sweep(tmp_path, clf_csv, tiny_model_dir, search=search)))
        assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == startup


def test_a_student_that_misses_a_speed_or_size_constraint_untrained_is_not_trained(
    tmp_path, clf_csv, tiny_model_dir, capfd
):
    space = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    search = {"n_trials": 1, "space": space, "pruner": "none"}
    constraints = ["ratio.params <= 0.5", "ratio.throughput >= 0.01"]  # the tiny student shares 99% of the params
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, search=search, constraints=constraints)
    sweep_file = yaml.safe_load(path.read_text())
    sweep_file["overrides"]["distill.report"] = True
    path.write_text(yaml.safe_dump(sweep_file, sort_keys=False))
    plan = main([str(path)])
    [trial] = trials_of(plan.out / "optuna.db")
    assert trial.state.name == "PRUNED" and "metrics" not in trial.user_attrs  # stopped before training
    overrides = [o for o in trial.user_attrs["overrides"] if o.startswith("distill.require=")]
    assert overrides == ["distill.require=[ratio.params <= 0.5, ratio.throughput >= 0.009]"]  # timing: 0.9x
    figures = trial.user_attrs["figures"]
    assert trial.constraints == pytest.approx(
        {
            "ratio.params <= 0.5": figures["ratio.params"] - 0.5,
            "ratio.throughput >= 0.01": 0.01 - figures["ratio.throughput"],
        }
    )  # what TPE learns from: the params bound missed (> 0), the speed bound met (< 0)
    assert trial.constraints["ratio.params <= 0.5"] > 0 > trial.constraints["ratio.throughput >= 0.01"]
    assert not (Path(trial.user_attrs["run_dir"]) / "student").exists()
    assert "not trained: distill.require: 'ratio.params <= 0.5' is not met" in capfd.readouterr().out
    with open(plan.out / "trials.csv") as f:
        [row] = list(csv.DictReader(f))
    assert row["state"] == "pruned" and row["note"].startswith("distill.require:") and not row["error"]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_sweep_started_again_runs_only_the_unfinished_trials(tmp_path, clf_csv, tiny_model_dir, how):
    """SIGKILL: the running trial is failed by the heartbeat check when the sweep starts again; SIGINT (Ctrl-C, to the
    sweep's process group as a terminal sends it): the sweep puts it back itself and ends with 130."""
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, grid={"distill.adaptors": [["HardCE"]]})
    sweep_file = yaml.safe_load(path.read_text())
    # trials of a few seconds: the kill lands inside one (Ctrl-C: inside its training, which stops at a step's end)
    sweep_file["overrides"]["trainer.max_epochs"] = 4 if how == "SIGKILL" else 20
    sweep_file |= {"seeds": [0, 1, 2], "heartbeat_s": 1}  # 3 trials; a dead worker's is back in 2 s
    path.write_text(yaml.safe_dump(sweep_file, sort_keys=False))
    out = tmp_path / "sweeps" / "sweep"
    # the sweep as its own process group (its worker and the trial it runs get the signal with it)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "sweep.py", str(path)], cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and sweep.poll() is None:
            states = states_of(out / "optuna.db")
            if "COMPLETE" in states and "RUNNING" in states:
                log = out / "trials" / f"t{states.index('RUNNING'):04d}.log"
                if how == "SIGKILL" or (log.is_file() and "validation after epoch 1:" in log.read_text()):
                    break
            time.sleep(0.2)
    finally:
        os.killpg(sweep.pid, getattr(signal, how))  # at once: the running trial must not finish first
        _, stderr = sweep.communicate(timeout=120)
    trials = trials_of(out / "optuna.db")  # after the sweep ended: nothing changes them any more
    done_before = {t.number: t.datetime_complete for t in trials if t.state.name == "COMPLETE"}
    if how == "SIGKILL":
        stopped = [t for t in trials if t.state.name == "RUNNING"]
        error = "its worker stopped (no heartbeat)"
    else:
        assert sweep.returncode == 130, stderr.decode()[-2000:]
        assert "interrupted: the same command goes on where the sweep stopped" in stderr.decode()
        assert not [t for t in trials if t.state.name == "RUNNING"]
        stopped = [t for t in trials if t.state.name == "FAIL"]
        retries = [t.system_attrs.get("failed_trial") for t in trials if t.state.name == "WAITING"]
        assert [r for r in retries if r is not None] == [stopped[0].number]  # enqueued again, with the plan's others
        error = "interrupted (Ctrl-C)"
        assert stopped[0].user_attrs["cpu_seconds"] > 0  # its run's CPU time counts in the sweep's
    assert len(stopped) == 1 and done_before
    main([str(path)])
    trials = trials_of(out / "optuna.db")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["point"] for t in complete) == sorted(
        json.dumps({"distill.adaptors": ["HardCE"], "seed": s}) for s in (0, 1, 2)
    )  # every point once
    for number, when in done_before.items():
        assert trials[number].datetime_complete == when  # finished before the kill: not run again
    retried = [t for t in complete if t.system_attrs.get("failed_trial") is not None]
    assert [t.system_attrs["failed_trial"] for t in retried] == [stopped[0].number]
    assert trials[stopped[0].number].state.name == "FAIL"
    assert len(complete) == 3 and len(trials) == 4
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "trials.csv").open())}
    assert rows[stopped[0].number]["error"] == f"{error}; run again as trial {retried[0].number}"
    run = out / "trials" / f"t{stopped[0].number:04d}"
    assert rows[retried[0].number]["run_dir"] == str(run)  # run again in its first run's directory
    if how == "SIGINT":  # stopped at a step's end with its last.ckpt: run again from there, not from the start
        assert "trainer.resume=last" in retried[0].user_attrs["overrides"]
        assert f"trainer.resume: going on from {run}/checkpoints/last.ckpt" in run.with_suffix(".log").read_text()


GOOD = {"grid": {"distill.adaptors": [["HardCE"]]}}


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"grid": {"optim.lrr": [1e-4]}}, r"grid: unknown key 'optim.lrr': no step's config has it"),
        ({"search": {"space": {"optim.lr_x": {"choices": [1]}}}}, r"search.space: unknown key 'optim.lr_x'"),
        ({"search": {"space": {}}}, r"search.space: .*non-empty"),
        ({"search": {"space": {"optim.lr": {"choices": []}}}}, r"search.space.*choices: .*non-empty"),
        ({"search": {"space": {"optim.lr": {"low": 1e-3, "high": 1e-4}}}}, r"low: .* below high .*empty range"),
        ({"grid": {"optim.lr": []}}, r"grid.optim.lr: give a non-empty list"),
        ({**GOOD, "constraints": ["ratio.speed >= 2"]}, r"'ratio.speed' is not a figure the run reports"),
        ({**GOOD, "constraints": ["ratio.throughput >= 2"]}, r"reads the report.*distill.report: true"),
        ({**GOOD, "objective": {"metric": "val/mcc"}}, r"objective.metric: 'val/mcc' is not logged"),
        ({"grid": {"optim.lr": [-1]}}, r"with optim.lr=-1: .*optim.lr: -1"),
        ({"grid": {"recipe": ["kd"]}}, r"picks one of `recipes`"),
        ({"search": {"space": {"optim.lr": {"choices": [1e-4]}}, "startup_trials": -1}}, r"search.startup_trials: -1"),
    ],
)
def test_bad_sweep_files_are_one_line_before_any_trial(tmp_path, clf_csv, tiny_model_dir, sections, message):
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, **sections)
    with pytest.raises(UserError, match=message) as err:
        load_plan(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_storage_that_does_not_open_is_one_line_before_any_trial(tmp_path, clf_csv, tiny_model_dir):
    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, **GOOD)
    for url in (f"sqlite:///{tmp_path}/missing/dir/x.db", "nosuchdb://host/x"):
        with pytest.raises(UserError, match=r"--storage .*: does not open") as err:
            main([str(path), "--storage", url])
        assert "\n" not in str(err.value)
    assert not (tmp_path / "sweeps" / "sweep" / "trials").exists()


@pytest.mark.realdata
def test_the_transfer_sweep_builds_its_transfer_set_once_for_every_trial_that_needs_it(
    tmp_path, shared_data, tiny_model_dir
):
    tiny = [
        f"overrides.teacher.name={tiny_model_dir}", "overrides.data.limit_train=24", "overrides.data.limit_eval=16",
        "overrides.data.max_length=16", "overrides.data.cache_dir=null", "overrides.trainer.accelerator=cpu",
        "overrides.trainer.checkpoint_every_n_steps=null", "overrides.student.init_from_teacher.model=null",
        "overrides.student.init_from_teacher.layers=[0]", "grid.recipe=[hard, kd_aug4, kd_aug4_e3]", "seeds=[0]",
        f"output_dir={tmp_path}",
    ]  # fmt: skip
    plan = main([str(ROOT / "sweeps" / "transfer_sst2.yaml"), *tiny])
    trials = trials_of(plan.out / "optuna.db", "transfer_sst2")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    built = list((plan.out / "steps").glob("transfer-*.done.json"))
    assert len(built) == 1  # one transfer set (n_iter 4), reused by both recipes that read it
    parquet = str(built[0].with_name(built[0].name.removesuffix(".done.json")) / "transfer.parquet")
    for t in trials:
        transfer = [o for o in t.user_attrs["overrides"] if o.startswith("data.transfer=")]
        assert transfer == ([f"data.transfer={parquet}"] if params_of(t)["recipe"] != "hard" else [])
    assert "| kd_aug4_e3 | 1 |" in (plan.out / "summary.md").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_sweep_files_load(path, shared_data):
    plan = load_plan(path)
    assert plan.points and plan.steps[-1].script == "distillation_ms.py"
