"""tune: Optuna search over the defense's knobs (flip ratio, temperatures, cycles, loss weights).

Never reads test data while searching; ``--register`` rebuilds the chosen trial's student from the
caches, evaluates it on test once and registers it as ``candidate``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from bedkd import cli
from bedkd.config import Params, check_space, load_params, with_overrides
from bedkd.errors import BedkdError, ConfigError
from bedkd.evaluate.plots import plot_pareto
from bedkd.events import Event
from bedkd.io import atomic_dir, write_json, write_text_atomic
from bedkd.modeling import load_classifier, save_classifier
from bedkd.runtime import resolve_runtime
from bedkd.settings import get_settings
from bedkd.tracking import base_tags, experiment_name, git_commit, nested_run, project_root
from bedkd.tune import Data, TuneContext, pick_best

log = logging.getLogger("bedkd.tune")


def make_storage(url: str) -> RDBStorage:
    # Heartbeats mark trials of dead workers FAILED; the callback re-enqueues them once.
    return RDBStorage(
        url,
        heartbeat_interval=30,
        grace_period=120,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        engine_kwargs={"pool_pre_ping": True},
    )


def open_study(storage: RDBStorage, name: str, params: Params) -> optuna.Study:
    t = params.tune
    if t.objective == "multi":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(population_size=t.population_size, seed=params.seed)
        kwargs: dict[str, Any] = {"directions": ["minimize", "maximize"], "pruner": optuna.pruners.NopPruner()}
    else:
        sampler = optuna.samplers.TPESampler(
            seed=params.seed, constraints_func=lambda tr: [tr.user_attrs.get("constraint", 0.0)]
        )
        pruner: optuna.pruners.BasePruner
        if t.pruner == "median":
            pruner = optuna.pruners.MedianPruner(n_startup_trials=t.pruner_startup_trials, n_warmup_steps=t.pruner_warmup_cycles)
        elif t.pruner == "threshold":
            pruner = optuna.pruners.ThresholdPruner(upper=t.prune_threshold, n_warmup_steps=t.pruner_warmup_cycles)
        else:
            pruner = optuna.pruners.NopPruner()
        kwargs = {"direction": "minimize", "pruner": pruner}
    # Workers may start together on a fresh database: creation can race, so retry a few times.
    for attempt in range(5):
        try:
            return optuna.create_study(storage=storage, study_name=name, sampler=sampler, load_if_exists=True, **kwargs)
        except Exception:  # DuplicatedStudyError / IntegrityError from a concurrent creator
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def suggest(trial: optuna.Trial, params: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, dim in params.tune.space.items():
        if dim.choices is not None:
            out[key] = trial.suggest_categorical(key, dim.choices)
            continue
        assert dim.low is not None and dim.high is not None  # SearchDim: a range when there are no choices
        if dim.integer:
            out[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
    return out


def pareto_rows(study: optuna.Study, params: Params) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(all complete trials, Pareto-optimal ones) as flat rows."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = {t.number for t in (study.best_trials if params.tune.objective == "multi" else ([study.best_trial] if done else []))}
    rows = []
    for t in done:
        rows.append(
            {
                "number": t.number,
                "asr": t.user_attrs["dev_asr"],
                "cacc": t.user_attrs["dev_cacc"],
                "cacc_drop": t.user_attrs["cacc_drop"],
                "oracle_asr": t.user_attrs["oracle_asr"],
                "proxy_asr": t.user_attrs["proxy_asr"],
                "pareto": t.number in best,
                **{f"param.{k}": v for k, v in t.params.items()},
            }
        )
    return rows, [r for r in rows if r["pareto"]]


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("tune", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    p.add_argument("--out", type=Path, default=Path("reports/tune"))
    p.add_argument("--student-out", type=Path, default=Path("models/tune/student"))
    p.add_argument("--n-trials", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds")
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: BEDKD_OPTUNA_STORAGE or sqlite optuna.db)")
    p.add_argument("--study-name", default=None)
    p.add_argument(
        "--victim", type=Path, default=None,
        help="a victim already trained with these params (e.g. models/victim after dvc repro): seeds the cache",
    )
    p.add_argument("--register", action="store_true", help="rebuild the best trial's student, test it once, register it")
    args = p.parse_args(argv)
    params = load_params(args.params)
    check_space(params, args.params)
    settings = get_settings()
    root = project_root()
    url = args.storage or settings.optuna_storage or f"sqlite:///{root / 'optuna.db'}"
    t = params.tune
    name = args.study_name or f"bedkd-{params.data.dataset}-{params.poison.attack}-{t.objective}-{t.mode}"
    runtime = resolve_runtime()
    cache = settings.cache_dir if settings.cache_dir.is_absolute() else root / settings.cache_dir
    ctx = TuneContext(Data.load(args.prepared, args.poisoned), runtime, cache)
    if args.victim is not None and ctx.seed_victim(params, args.victim):
        log.info("victim cache seeded from %s", args.victim)
    study = open_study(make_storage(url), name, params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    commit = git_commit()
    tags = {**base_tags(params, commit), "optuna.study": name, "optuna.storage": url.split("@")[-1]}

    with nested_run(experiment_name(params), f"study:{name}", {**tags, "bedkd.role": "study"}, {"tune.objective": t.objective, "tune.mode": t.mode}) as study_run:

        ran: list[int] = []  # trials this worker evaluated (others may share the study)

        def objective(trial: optuna.Trial) -> float | tuple[float, float]:
            ran.append(trial.number)
            overrides = suggest(trial, params)
            # Switches tuned together can combine into an invalid setting (schedule joint with punish
            # ascent): such a trial fails with the config error and the study goes on.
            tp = with_overrides(params, overrides, where=f"trial {trial.number}")
            with nested_run(
                experiment_name(params), f"trial-{trial.number}", {**tags, "bedkd.role": "trial", "optuna.trial": str(trial.number)},
                overrides, parent_run_id=study_run.run_id,
            ) as tr:

                def prune(event: Event) -> None:
                    key = "dev/proxy_asr" if t.mode == "blind" else "dev/asr"
                    if t.objective == "single" and key in event.metrics and not math.isnan(event.metrics[key]):
                        trial.report(event.metrics[key], event.step)
                        if trial.should_prune():
                            raise optuna.TrialPruned(f"pruned at cycle {event.step}")

                result, _ = ctx.run_trial(tp, t.mode, callbacks=[tr.callback, prune])
                final = {
                    "dev_cacc": result.dev_cacc,
                    "dev_asr": result.dev_asr,
                    "cacc_drop": result.cacc_drop,
                    "oracle_asr": result.oracle_asr,
                    "proxy_asr": result.proxy_asr,
                }
                for k, v in final.items():
                    trial.set_user_attr(k, v)
                trial.set_user_attr("constraint", result.cacc_drop - t.max_cacc_drop)
                tr.log_metrics({f"final/{k}": v for k, v in final.items()})
            if t.objective == "multi":
                return result.dev_asr, result.dev_cacc
            return result.dev_asr

        start = time.perf_counter()
        study.optimize(objective, n_trials=args.n_trials, timeout=args.timeout, n_jobs=args.n_jobs, catch=(RuntimeError, ValueError, ConfigError))
        elapsed = time.perf_counter() - start
        mine = len(ran)
        rows, front = pareto_rows(study, params)
        stats = {
            "study": name,
            "trials_total": len(study.trials),
            "trials_this_worker": mine,
            "trials_per_hour": mine / (elapsed / 3600) if elapsed > 0 else 0.0,
            "elapsed_s": elapsed,
            "pruned": sum(tr.state == optuna.trial.TrialState.PRUNED for tr in study.trials),
            "failed": sum(tr.state == optuna.trial.TrialState.FAIL for tr in study.trials),
            "cache": ctx.stats.__dict__,
            "device": str(runtime.device),
        }
        best = pick_best(front, t.max_cacc_drop)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "study.json", stats)
        if rows:
            import pandas as pd

            pd.DataFrame(rows).to_csv(args.out / "trials.csv", index=False)
            pd.DataFrame(front).to_csv(args.out / "pareto.csv", index=False)
            plot_pareto(rows, args.out / "pareto.png", title=f"{name} ({t.mode} objective, dev split)")
        if best is not None:
            chosen = {k[len("param."):]: v for k, v in best.items() if k.startswith("param.")}
            write_text_atomic(
                args.out / "best_params.yaml",
                yaml.safe_dump(
                    {"study": name, "trial": int(best["number"]), "objective": t.objective, "mode": t.mode,
                     "dev": {k: float(best[k]) for k in ("asr", "cacc", "cacc_drop", "oracle_asr", "proxy_asr")},
                     "params": chosen},
                    sort_keys=True,
                ),
            )
        study_run.log_metrics({"study/trials_per_hour": stats["trials_per_hour"], "study/trials_total": stats["trials_total"]})
        for f in ("study.json", "trials.csv", "pareto.csv", "pareto.png", "best_params.yaml"):
            study_run.log_artifact(args.out / f, "tune")
    log.info("study %s: %s", name, stats)
    print(f"study {name}: {stats['trials_total']} trials, {stats['trials_per_hour']:.1f} trials/hour here; best: {best}")

    if args.register:
        if best is None:
            raise BedkdError(f"study {name}: no complete trial to register")
        _register_best(ctx, params, best, args, name)


def _register_best(ctx: TuneContext, params: Params, best: dict[str, Any], args: Any, study: str) -> None:
    from bedkd.tracking.registry import data_evidence, register_student

    chosen = {k[len("param."):]: v for k, v in best.items() if k.startswith("param.")}
    tp = with_overrides(params, chosen, where=f"trial {best['number']}")
    victim_before = ctx.stats.victim_trained
    _, student = ctx.run_trial(tp, tp.tune.mode)  # victim + DMM come from the cache
    assert ctx.stats.victim_trained == victim_before, "victim should come from the cache"
    metrics = ctx.test_metrics(student, tp)
    with atomic_dir(args.student_out) as tmp:
        save_classifier(student, tmp)
    write_json(args.out / "test_metrics.json", metrics)
    evidence, example = data_evidence(args.prepared, args.poisoned)
    tags = {**base_tags(tp, git_commit()), **evidence, "optuna.study": study, "optuna.trial": str(best["number"])}
    res = register_student(args.student_out, tp.model_name, metrics, tags, experiment_name(tp), example, load=load_classifier)
    print(f"test {metrics}; {'registered' if res.created else 'already registered:'} {res.name} version {res.version} as candidate")


if __name__ == "__main__":
    cli.run(main)
