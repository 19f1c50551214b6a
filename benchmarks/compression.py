"""Compression that matters, on Fashion-MNIST's ResNet-8: what a search of a stated
budget finds, before and after.

Goals (issue 13): a candidate **>= 3x faster** than the baseline timed in the same run,
and one **>= 8x smaller** in real bytes (``size_bytes``: the packed model file), each
at **<= 1 point** of test-accuracy loss.  Candidates are *chosen* by validation
accuracy (within 1 point of the baseline's), as a user would choose them; their test
accuracy is reported beside (never seen by the search).

Modes::

    # 1. hand-picked combinations, each trained and measured once (learn what is reachable)
    PYTHONPATH=. python benchmarks/compression.py --hand-picked [--epochs 3 --recovery 2]
    # 2. the search a user would run (the defaults: warm starts, the task's epochs),
    #    accuracy vs latency vs packed size; then, optionally, the front refit with more epochs
    PYTHONPATH=. python benchmarks/compression.py --trials 20 [--refit-epochs 4]
    #    ... or the search's own proposals only, sparse (issue 21 part 4)
    PYTHONPATH=. python benchmarks/compression.py --trials 30 --no-warm-start --moved-families 2 \
        --results benchmarks/results/compression_sparse.json
    # 3. the lead's one-command runner: the stored table, plus the cheapest check
    #    (int8 alone, no training: same-run speed-up and accuracy) in a minute or two
    PYTHONPATH=. python benchmarks/compression.py --quick

The full run writes its rows to ``--results`` (default
``benchmarks/results/compression_fashion.json``), which ``--quick`` reads back.
Everything runs with one torch thread, ONNX Runtime, 1 thread, batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: the shared hypervolume
from _hypervolume import normalised_hypervolume  # noqa: E402

TASK = "fashion-mnist"
OBJECTIVES = ("accuracy", "latency_ms", "size_bytes")
LOSS = 0.01  # one point
ES_TARGET_SAVING, ES_TARGET_LOSS = 0.30, 0.02  # issue 13: early stopping's training-time saving at this loss
SPEED_GOAL, SIZE_GOAL = 3.0, 8.0
RESULTS = Path(__file__).resolve().parent / "results" / "compression_fashion.json"

#: Before: the previous session's 20-trial search (GP sampler, warm starts with DS-conv on
#: every conv, the stem included; 3 distillation + 2 recovery epochs; 49 min at load 3-9)
#: and its front refit with 1 + 5 epochs: the best same-run speed-up and size ratio
#: within a test point.
BEFORE = {
    "budget": "20 trials (GP sampler, 3 distillation + 2 recovery epochs, 49 min wall at load 3-9), front refit 1 + 5",
    "rows": [
        {"what": "fastest found", "speedup": 3.23, "size_ratio": 5.59, "test_delta": -0.0761},
        {"what": "fastest within 1 point", "speedup": 1.73, "size_ratio": 10.12, "test_delta": 0.0053},
        {"what": "fastest within 1 point (refit 1 + 5)", "speedup": 1.88, "size_ratio": 12.33, "test_delta": -0.0096},
        {"what": "smallest within 1 point", "speedup": 1.69, "size_ratio": 11.41, "test_delta": -0.0049},
    ],
}

#: Hand-picked combinations (mode 1): the baseline's neighbourhood.
HAND_PICKED: dict[str, dict[str, Any]] = {
    "int8": {"quant.bits": 8},
    "int8 + channel 0.3": {"quant.bits": 8, "prune.granularity": "channel", "prune.ratio": 0.3},
    "int8 + channel 0.5": {"quant.bits": 8, "prune.granularity": "channel", "prune.ratio": 0.5},
    "fp32 channel 0.5": {"prune.granularity": "channel", "prune.ratio": 0.5},
    "fp32 channel 0.6": {"prune.granularity": "channel", "prune.ratio": 0.6},
    "DS-conv everywhere": {"dsconv.*": True},
    "DS-conv but the stem": {"dsconv.*": True, "dsconv.blocks.0.0": False},
    "4-bit QAT + weight 0.5": {"quant.bits": 4, "quant.mode": "qat", "prune.granularity": "weight", "prune.ratio": 0.5},
}


# -- choosing and printing ----------------------------------------------------------
def speedup(row: Mapping[str, Any]) -> float:
    return float(row["reference_latency_ms"]) / float(row["latency_ms"])


def best_within(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any], goal: str,
                loss: float = LOSS, by: str = "accuracy") -> Mapping[str, Any] | None:
    """The fastest (``goal="speed"``) or smallest (``"size"``) complete row whose ``by``
    accuracy (``accuracy`` = validation, or ``test_accuracy``) is at least the
    baseline's minus ``loss``."""
    ok = [r for r in rows if r.get("state") == "COMPLETE" and float(r[by]) >= float(baseline[by]) - loss]
    if not ok:
        return None
    if goal == "speed":
        return max(ok, key=speedup)
    return min(ok, key=lambda r: float(r["size_bytes"]))


def describe(params: Mapping[str, Any]) -> str:
    """A short summary of the non-default compression in ``params``."""
    parts = []
    bits = params.get("quant.bits", 32)
    if bits != 32:
        parts.append(f"{bits}-bit {params.get('quant.mode', 'ptq')}")
    if float(params.get("prune.ratio", 0)) > 0:
        parts.append(f"{params.get('prune.granularity')} prune {float(params['prune.ratio']):.2f}")
    ds = [k for k, v in params.items() if k.startswith("dsconv.") and v]
    if ds:
        parts.append(f"{len(ds)} DS-conv")
    lr = [f"{k[8:]}={float(v):.2f}" for k, v in params.items() if k.startswith("lowrank.") and float(v) < 1]
    if lr:
        parts.append("low-rank " + ",".join(lr))
    ex = [k.split(".")[1] for k, v in params.items() if k.startswith("exits.") and k.endswith(".enabled") and v]
    if ex:
        parts.append("exits " + ",".join(f"{e}@{float(params[f'exits.{e}.threshold']):.2f}" for e in ex))
    return ", ".join(parts) or "baseline values"


def table_rows(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any], label: str) -> list[dict[str, Any]]:
    """The before/after lines of one set of trials: best speed-up and best size within
    one point (chosen by validation, and for reference by test)."""
    out = []
    done = [r for r in rows if r.get("state") == "COMPLETE"]
    if done:
        fastest = max(done, key=speedup)
        out.append({"what": f"{label}: fastest found", "trial": fastest["trial"], "speedup": speedup(fastest),
                    "size_ratio": float(baseline["size_bytes"]) / float(fastest["size_bytes"]),
                    "val_delta": float(fastest["accuracy"]) - float(baseline["accuracy"]),
                    "test_delta": float(fastest["test_accuracy"]) - float(baseline["test_accuracy"]),
                    "params": describe(fastest["params"])})
    for goal in ("speed", "size"):
        for by in ("accuracy", "test_accuracy"):
            row = best_within(rows, baseline, goal, by=by)
            what = f"{label}: {'fastest' if goal == 'speed' else 'smallest'} within 1 pt ({'val' if by == 'accuracy' else 'test'})"
            if row is None:
                out.append({"what": what, "trial": None})
                continue
            out.append({"what": what, "trial": row["trial"], "speedup": speedup(row),
                        "size_ratio": float(baseline["size_bytes"]) / float(row["size_bytes"]),
                        "val_delta": float(row["accuracy"]) - float(baseline["accuracy"]),
                        "test_delta": float(row["test_accuracy"]) - float(baseline["test_accuracy"]),
                        "params": describe(row["params"])})
    return out


def print_table(lines: Sequence[Mapping[str, Any]]) -> None:
    print(f"{'':<52} {'trial':>5} {'speed-up':>8} {'size x':>7} {'val pts':>8} {'test pts':>8}  what")
    for line in lines:
        if line.get("trial") is None and line.get("speedup") is None:
            print(f"{line['what']:<52} {'-':>5}  (none)")
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{line['what']:<52} {fmt(line.get('trial'), ''):>5} {fmt(line.get('speedup'), '.2f'):>8} "
              f"{fmt(line.get('size_ratio'), '.2f'):>7} {fmt(None if line.get('val_delta') is None else 100 * line['val_delta'], '+.2f'):>8} "
              f"{fmt(None if line.get('test_delta') is None else 100 * line['test_delta'], '+.2f'):>8}  {line.get('params', '')}")


def verdict(lines: Sequence[Mapping[str, Any]], label: str) -> list[str]:
    """Whether the goals were met by candidates chosen by validation accuracy (their
    test loss checked too)."""
    out = []
    for goal, key, target in (("speed", "speedup", SPEED_GOAL), ("size", "size_ratio", SIZE_GOAL)):
        line = next((x for x in lines if x["what"].startswith(f"{label}: {'fastest' if goal == 'speed' else 'smallest'}")
                     and x["what"].endswith("(val)")), None)
        met = bool(line and line.get("trial") is not None and line[key] >= target and line["test_delta"] >= -LOSS)
        got = "none" if not line or line.get("trial") is None else (
            f"{line[key]:.2f}x at {100 * line['test_delta']:+.2f} test pts (trial {line['trial']})")
        out.append(f"{label}: >= {target:g}x {'faster' if goal == 'speed' else 'smaller'} at <= 1 test pt: "
                   f"{'MET' if met else 'not met'} ({got})")
    return out


def replay_early_stopping(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str], epochs: int,
                          recovery_epochs: int, rule: Any = None, baseline: Mapping[str, Any] | None = None
                          ) -> dict[str, Any]:
    """The frontier rule (default: the shipped one) REPLAYED on one stored search's
    complete trials, in trial order (not a paired re-run: the sampler's later proposals
    would change once trials stop): each trial against the complete trials numbered
    before it that the rule kept, first before training (its pre-training costs, its
    final ones when it has none; the baseline's validation accuracy), then at each
    distillation epoch of its recorded learning curve, then at each recorded recovery
    epoch (rows from before the recovery checks have none: no stop there).

    Returns the trials it stops (``epoch`` 0: before training), the training epochs
    (distillation + recovery) and training seconds (a trial's ``train_seconds`` in
    proportion to its epochs) it saves out of all run, how many stopped trials are on
    the search's final front, and the hypervolume of (test accuracy, each cost relative
    to the baseline's) with and without the stopped trials (reference: accuracy 0.5,
    1.2x each baseline cost) and its relative loss."""
    from slimtune.search._early_stopping import FrontierEarlyStopping, points_from_rows
    from slimtune.spaces._space import recovery_passes
    from slimtune._dominance import non_dominated_mask

    rule = FrontierEarlyStopping() if rule is None else rule
    costs = [o for o in objectives if o != "accuracy"]
    base_acc = float((baseline or {}).get("val_accuracy") or "nan")
    done = sorted((r for r in rows if r.get("state") == "COMPLETE"), key=lambda r: r["trial"])
    on_front = dict(zip((r["trial"] for r in done), non_dominated_mask(done, objectives)))
    kept: list[Mapping[str, Any]] = []
    stopped, saved, total, saved_s, total_s = [], 0, 0, 0.0, 0.0
    for row in done:
        extra = recovery_epochs * recovery_passes(row["params"])
        curve = list(row.get("val_accuracy_per_epoch") or ())
        recovery = list(row.get("val_accuracy_per_recovery_epoch") or ())
        run = len(curve) + extra
        total += run
        total_s += float(row.get("train_seconds") or 0.0)
        pre = type("Pre", (), {c: float((row.get("pre") or {}).get(c, row[c])) for c in costs})()
        should_stop = rule.should_stop_fn(points_from_rows(kept, costs), costs, epochs, extra_epochs=extra,
                                          baseline_accuracy=base_acc)
        checks = [(-1, None), *enumerate(curve), *((epochs + r, a) for r, a in enumerate(recovery))]
        for epoch, acc in checks:
            reason = should_stop(epoch, acc, pre)
            if reason:
                trained = min(run, epoch + 1 if epoch < epochs else len(curve) + epoch - epochs + 1)
                stopped.append({"trial": row["trial"], "epoch": trained, "pareto": on_front[row["trial"]],
                                "reason": reason})
                saved += run - trained
                saved_s += float(row.get("train_seconds") or 0.0) * (run - trained) / max(1, run)
                break
        else:
            kept.append(row)
    hv = lambda rs: _hypervolume(rs, costs, baseline)  # noqa: E731
    hv_all, hv_kept = hv(done), hv(kept)
    near = lambda rs: min((float(r["latency_ms"]) for r in rs if r["val_accuracy"] >= base_acc - 0.01),  # noqa: E731
                          default=None)
    fastest_near_without, fastest_near_with = near(done), near(kept)
    return {"stopped": stopped, "epochs_saved": saved, "epochs_total": total, "seconds_saved": saved_s,
            "fastest_near_without": fastest_near_without, "fastest_near_with": fastest_near_with,
            "near_lost": fastest_near_without is not None and (
                fastest_near_with is None or fastest_near_with > fastest_near_without),
            "seconds_total": total_s, "train_saving": saved_s / total_s if total_s else 0.0,
            "hv_without": hv_all, "hv_with": hv_kept, "hv_loss": 1 - hv_kept / hv_all if hv_all else 0.0}


def _hypervolume(rows: Sequence[Mapping[str, Any]], costs: Sequence[str], baseline: Mapping[str, Any] | None) -> float:
    """:func:`normalised_hypervolume` of (test accuracy, each cost / the baseline's) of ``rows``."""
    scale = {c: float((baseline or {}).get(c) or 1.0) for c in costs}
    return normalised_hypervolume((float(r["test_accuracy"]), *(float(r[c]) / scale[c] for c in costs))
                                  for r in rows if r.get("test_accuracy") is not None)


def oracle_saving(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str], tolerance: float = 0.05) -> float:
    """The training time an oracle rule could save on a stored search (an upper bound of
    any frontier rule): it stops every complete trial whose FINAL validation accuracy
    is at most ``tolerance`` above that of an earlier complete trial no costlier than
    the trial's pre-training costs."""
    costs = [o for o in objectives if o != "accuracy"]
    done = sorted((r for r in rows if r.get("state") == "COMPLETE"), key=lambda r: r["trial"])
    total = sum(float(r.get("train_seconds") or 0.0) for r in done)
    saved = 0.0
    for i, row in enumerate(done):
        pre = {c: float((row.get("pre") or {}).get(c, row[c])) for c in costs}
        if any(q["val_accuracy"] >= row["val_accuracy"] - tolerance and all(q[c] <= pre[c] for c in costs)
               for q in done[:i]):
            saved += float(row.get("train_seconds") or 0.0)
    return saved / total if total else 0.0


#: Early-stopping settings of the replayed saving / loss curve (``FrontierEarlyStopping`` fields).
ES_SETTINGS: list[dict[str, Any]] = [
    {"pre_check": pre, "accuracy_tolerance": tol} for pre in (False, True) for tol in (0.0, 0.005, 0.01, 0.02, 0.05)
]


def es_curve(result: Mapping[str, Any], objectives: Sequence[str],
             settings: Sequence[Mapping[str, Any]] = ES_SETTINGS) -> list[dict[str, Any]]:
    """:func:`replay_early_stopping` of each rule setting on a stored search."""
    from slimtune.search._early_stopping import FrontierEarlyStopping

    b = result["budget"]
    out = []
    for setting in settings:
        es = replay_early_stopping(result["rows"], objectives, int(b["epochs_run"]), int(b["recovery_run"]),
                                   FrontierEarlyStopping(**setting), result.get("baseline"))
        out.append({**setting, **{k: es[k] for k in ("train_saving", "hv_loss", "epochs_saved", "epochs_total",
                                                     "near_lost", "fastest_near_without", "fastest_near_with")},
                    "stopped": len(es["stopped"]), "on_front": sum(s["pareto"] for s in es["stopped"])})
    return out


# -- modes ------------------------------------------------------------------------
def hand_picked(args: argparse.Namespace) -> int:
    """Each :data:`HAND_PICKED` combination trained and measured once, beside the baseline."""
    from slimtune.search._task_space import build_space
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.search._warm_start import warm_start_trials
    from slimtune.tasks import get_task

    task = get_task(TASK)
    space = build_space(task)
    baseline = get_baseline(task, seed=0)
    ev = Evaluator(task, space, EvalSettings(epochs=args.epochs, finetune_epochs=args.recovery,
                                             latency_repeats=args.latency_repeats), baseline)
    base = ev.baseline_measurement()
    print(f"{TASK}: {args.epochs} distillation + {args.recovery} recovery epochs; baseline val {base.accuracy:.4f} "
          f"test {base.test_accuracy:.4f}, {base.size_bytes:,} B packed")
    only = [s for s in args.only.split(",") if s]
    for label, values in HAND_PICKED.items():
        if only and not any(s in label for s in only):
            continue
        started = time.perf_counter()
        m = ev.evaluate(space.complete(warm_start_trials(space, task, [values])[0])).measurement  # expands dsconv.*
        print(f"{label:<26} val {100 * (m.accuracy - base.accuracy):+6.2f} pts  test {100 * (m.test_accuracy - base.test_accuracy):+6.2f} "
              f"pts  speed-up {m.speedup:5.2f}x  size {base.size_bytes / m.size_bytes:5.2f}x  MACs {m.macs / base.macs:.3f}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


def search(args: argparse.Namespace) -> int:
    """The default search at the stated budget (and the optional refit); writes the results."""
    import optuna

    from slimtune import Study
    from slimtune.studies._refit import refit_front

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="slimtune-compression-")
    storage = args.storage or f"sqlite:///{Path(tmp) / 'compression.db'}"
    settings = {"latency_repeats": args.latency_repeats}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.recovery is not None:
        settings["finetune_epochs"] = args.recovery
    study = Study.create_or_load(args.study, storage=storage, task=TASK, objectives=OBJECTIVES, seed=args.seed,
                                 settings=settings, progress=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    remaining = args.trials - len(study.trials())  # a kept study (--storage) resumes up to --trials
    if remaining > 0:
        options = {"moved_families": args.moved_families} if args.moved_families else {}
        study.optimize(n_trials=remaining, progress=True, warm_start=not args.no_warm_start, **options)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rows = study.trials()
    baseline = study.baseline_row()
    starts = [r["datetime_start"] for r in rows if r.get("datetime_start")]
    ends = [r["datetime_complete"] for r in rows if r.get("datetime_complete")]
    from datetime import datetime

    span = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts))).total_seconds() if ends else 0.0
    result: dict[str, Any] = {
        "budget": {"trials": len(rows), "sampler": study.info()["sampler"], "seed": args.seed,
                   "warm_start": not args.no_warm_start, "moved_families": args.moved_families,
                   "states": {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")},
                   "span_s": round(span, 1), "trial_s": round(sum(r.get("total_seconds") or 0.0 for r in rows), 1),
                   "epochs": study.settings.epochs, "finetune_epochs": study.settings.finetune_epochs,
                   "epochs_run": study.task.finetune_epochs if study.settings.epochs is None else study.settings.epochs,
                   "recovery_run": (study.task.recovery_epochs if study.settings.finetune_epochs is None
                                    else study.settings.finetune_epochs),
                   "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load": os.getloadavg()},
        "baseline": baseline, "rows": rows,
    }
    if args.refit_epochs:
        r0, w0 = time.process_time(), time.perf_counter()
        refit = refit_front(study, storage=storage, epochs=args.refit_epochs, finetune_epochs=args.refit_recovery,
                            skip_within=args.refit_skip_within, progress=True)
        result["refit"] = {"epochs": args.refit_epochs, "finetune_epochs": args.refit_recovery,
                           "wall_s": round(time.perf_counter() - w0, 1), "cpu_s": round(time.process_time() - r0, 1),
                           "baseline": refit.baseline_row(), "rows": refit.trials()}
        refit.close()
    study.close()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1, default=str))
    report(result)
    print(f"(study {args.study!r} in {storage}; results in {args.results})")
    return 0


def report(result: Mapping[str, Any]) -> None:
    """The before/after table of a stored result."""
    from slimtune.search._early_stopping import FrontierEarlyStopping

    b = result["budget"]
    print(f"\nBefore ({BEFORE['budget']}):")
    print_table([{**r, "trial": None if r["speedup"] is None else "-"} for r in BEFORE["rows"]])
    print(f"\nAfter: {b['trials']} trials {b['states']} ({b['sampler']}, seed {b['seed']}, {b['epochs_run']} distillation + "
          f"{b['recovery_run']} recovery epochs), first start to last end {b['span_s'] / 60:.1f} min, "
          f"{b['trial_s'] / 60:.1f} trial-minutes (wall, summed over workers); load at the end "
          f"{', '.join(f'{x:.1f}' for x in b['load'])}")
    lines = table_rows(result["rows"], result["baseline"], "search")
    verdicts = verdict(lines, "search")
    if "refit" in result:
        f = result["refit"]
        label = f"refit ({f['epochs']}+{'task' if f['finetune_epochs'] is None else f['finetune_epochs']} ep)"
        print(f"{label}: front candidates retrained: {len(f['rows'])} trial(s), "
              f"{f['wall_s'] / 60:.1f} min wall, {f['cpu_s'] / 60:.1f} min CPU")
        lines += table_rows(f["rows"], f["baseline"], label)
        verdicts += verdict(lines, label)
    print_table(lines)
    print()
    for line in verdicts:
        print(line)
    real = [r["trial"] for r in result["rows"] if r.get("state") == "PRUNED"]
    print(f"\nearly stopping in this search: {len(real)} trial(s) stopped {real}")
    print("early stopping REPLAYED on this one stored search's complete trials in trial order (not a paired re-run); "
          f"issue 13's target: >= {100 * ES_TARGET_SAVING:.0f}% less training time at <= {100 * ES_TARGET_LOSS:.0f}% "
          "hypervolume loss (test accuracy, costs / the baseline's)")
    for objectives in (OBJECTIVES, ("accuracy", "latency_ms")):
        es = replay_early_stopping(result["rows"], objectives, int(b["epochs_run"]), int(b["recovery_run"]),
                                   baseline=result.get("baseline"))
        met = es["train_saving"] >= ES_TARGET_SAVING and es["hv_loss"] <= ES_TARGET_LOSS
        before = sum(s["epoch"] == 0 for s in es["stopped"])
        print(f"  default rule ({', '.join(objectives[1:])}): stops {len(es['stopped'])} "
              f"{[s['trial'] for s in es['stopped']]} ({before} before training, "
              f"{sum(s['pareto'] for s in es['stopped'])} on the val front), training time "
              f"-{100 * es['train_saving']:.0f}% ({es['epochs_saved']} of {es['epochs_total']} epochs), hypervolume "
              f"loss {100 * es['hv_loss']:.1f}%, the fastest trial within 1 val point of the baseline "
              f"{'LOST' if es['near_lost'] else 'kept'}: {'MET' if met else 'not met'} (an oracle that knows every final "
              f"accuracy: -{100 * oracle_saving(result['rows'], objectives):.0f}%)")
    for objectives in (OBJECTIVES, ("accuracy", "latency_ms")):
        curve = es_curve(result, objectives)
        print(f"  saving / loss by setting ({', '.join(objectives[1:])}; latency tolerance "
              f"{FrontierEarlyStopping().latency_tolerance:g}): " + "; ".join(
            f"{'pre ' if c['pre_check'] else ''}tol {c['accuracy_tolerance']:g} -{100 * c['train_saving']:.0f}% / "
            f"{100 * c['hv_loss']:.1f}%" for c in curve))


def quick(args: argparse.Namespace) -> int:
    """The stored table, then int8 alone without training, checked against the baseline
    timed in the same run (exit 1 if it is not faster or loses more than a point)."""
    if args.results.exists():
        report(json.loads(args.results.read_text()))
    else:
        print(f"no stored results at {args.results} (run without --quick to make them)")
    from slimtune.search._task_space import build_space
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.tasks import TaskError, get_task

    try:
        task = get_task(TASK)
    except TaskError as exc:
        print(f"skipping the check: {exc}")
        return 0
    space = build_space(task)
    ev = Evaluator(task, space, EvalSettings(epochs=0, finetune_epochs=0, latency_repeats=args.latency_repeats),
                   get_baseline(task, seed=0, progress=True))
    m = ev.evaluate(space.complete({"quant.bits": 8})).measurement
    base = ev.baseline_measurement()
    loss = base.test_accuracy - m.test_accuracy
    ok = m.speedup >= 1.2 and loss <= LOSS
    print(f"\ncheck: int8 alone, no training: same-run speed-up {m.speedup:.2f}x (>= 1.2), test accuracy "
          f"{m.test_accuracy:.4f} vs {base.test_accuracy:.4f} ({-100 * loss:+.2f} pts, loss <= 1), packed "
          f"{base.size_bytes / m.size_bytes:.2f}x smaller: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the stored table and the cheapest check")
    parser.add_argument("--hand-picked", action="store_true", help="the hand-picked combinations, each once")
    parser.add_argument("--only", default="", help="with --hand-picked: comma-separated substrings of labels")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the task's)")
    parser.add_argument("--recovery", type=int, default=None, help="recovery epochs (default: the task's)")
    parser.add_argument("--refit-epochs", type=int, default=0, help="refit the front with this many epochs (0: no)")
    parser.add_argument("--refit-recovery", type=int, default=None, help="recovery epochs of the refit")
    parser.add_argument("--refit-skip-within", type=float, default=None,
                        help="refit only front candidates that missed the baseline by more than this (e.g. 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warm-start", action="store_true", help="the search's own proposals from the first trial")
    parser.add_argument("--moved-families", type=int, default=None, help="sparse proposals moving 1..K families")
    parser.add_argument("--latency-repeats", type=int, default=100)
    parser.add_argument("--study", default="compression")
    parser.add_argument("--storage", default=None, help="keep the study here (default: a temporary SQLite file)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if args.quick:
        return quick(args)
    if args.hand_picked:
        args.epochs = 1 if args.epochs is None else args.epochs
        args.recovery = 1 if args.recovery is None else args.recovery
        return hand_picked(args)
    return search(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
