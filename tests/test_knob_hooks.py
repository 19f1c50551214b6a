"""A knob is one file plus one registration line: the core asks the knobs (their
training hooks, cost bound, weight bits, task options, compact codes, display) and
never names one; a knob registered from a test file runs a search with no core edit."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest
import torch
import torch.nn.functional as F

from slimtune import Study
from slimtune.search._early_stopping import FrontierPoint
from slimtune.search._trainer import TrainConfig, _param_groups, model_outputs
from slimtune.spaces import (Knob, KnobContext, Param, Space, SpaceError, TrainingHooks, get_knob, knob_families,
                             register_knob)
from slimtune.spaces import _registry
from slimtune.spaces._space import combine_training_hooks, weight_bits
from slimtune.spaces.distillation import distillation_loss
from slimtune.tasks._models import small_cnn

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimtune"
FAST = {"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}

#: Modules that may name knobs: the registration lines, and the built-in tasks (a task,
#: like a user's, may name the parameters of its warm starts).
NAMING_ALLOWED = {"spaces/__init__.py", "tasks/_builtin.py"}


def _knob_files() -> set[str]:
    """The registered knobs' modules, relative to slimtune/ (read from the registry)."""
    return {Path(sys.modules[get_knob(f).__module__].__file__).resolve().relative_to(PACKAGE).as_posix()
            for f in knob_families()}


def _imported_modules(relative: str) -> set[str]:
    """The package modules (relative paths) that ``relative`` imports, lazily or not."""
    out = set()
    for node in ast.walk(ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if isinstance(node, ast.ImportFrom) and \
            node.module else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "slimtune":
                for candidate in ("/".join(parts[1:]) + ".py", "/".join(parts[1:]) + "/__init__.py"):
                    if (PACKAGE / candidate).is_file():
                        out.add(candidate)
    return out


def knob_owned_modules() -> set[str]:
    """The knobs' files and their private helpers: a module of ``spaces/`` that only
    knob-owned modules import (e.g. the weight masks of the pruning knob)."""
    owned = set(_knob_files())
    modules = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")]
    importers: dict[str, set[str]] = {}
    for rel in modules:
        for target in _imported_modules(rel):
            importers.setdefault(target, set()).add(rel)
    grown = True
    while grown:
        grown = False
        for rel in modules:
            users = importers.get(rel, set()) - {rel}
            if rel.startswith("spaces/_") and rel not in owned and users and users <= owned:
                owned.add(rel)
                grown = True
    return owned


def core_modules() -> list[str]:
    """Every module of the package but the knob-owned ones and :data:`NAMING_ALLOWED`:
    the core, runtimes and CLI included."""
    knobs = knob_owned_modules()
    return sorted(rel for p in PACKAGE.rglob("*.py")
                  if (rel := p.relative_to(PACKAGE).as_posix()) not in knobs | NAMING_ALLOWED)


def _strings_without_docstrings(tree: ast.AST) -> list[str]:
    """Every string constant (f-string parts included) of ``tree`` but its docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_core_modules_never_name_a_knob():
    """No family prefix (``quant.``), family name or knob module in the core's code
    (docstrings aside); failed on the trainer (distillation_loss, ``exits.``) and the
    evaluator (``quant.bits``, ``distill.alpha``) before the hooks."""
    families = set(knob_families())
    knob_modules = {Path(rel).stem for rel in _knob_files()}
    core = core_modules()
    assert {"search/_runtimes/_ort.py", "search/_profiling.py", "search/_pipeline.py", "spaces/_lowering.py"} <= set(core)
    assert any(rel.startswith("cli") for rel in core) and "spaces/quantization.py" not in core
    offences = []
    for relative in core:
        path = PACKAGE / relative
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for text in _strings_without_docstrings(tree):
            named = [f for f in families if text == f or f"{f}." in text or f"'{f}'" in text]
            if named:
                offences.append(f"{relative}: {text!r} names {named}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                hit = [m for m in modules if m.split(".")[-1] in knob_modules and m.startswith("slimtune.spaces")]
                if hit:
                    offences.append(f"{relative}: imports {hit[0]}")
    assert not offences, "\n".join(offences)


# -- the built-in knobs' hooks -------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_space():
    torch.manual_seed(0)
    return Space.for_model(small_cnn(), families=["prune", "quant", "distill", "exits"])


def test_distillation_and_exits_supply_the_training_hooks(cnn_space):
    values = cnn_space.complete({"distill.temperature": 3.0, "distill.alpha": 0.6, "exits.1.enabled": True})
    hooks = cnn_space.training_hooks(values)
    zs, zt, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(hooks.loss(zs, zt, y), distillation_loss(zs, zt, y, temperature=3.0, alpha=0.6))
    assert torch.allclose(hooks.loss(zs, None, y), F.cross_entropy(zs, y))  # no teacher: the labels only
    # the exits knob: every exit trained beside the final head, its heads at 10x the lr
    ctx = KnobContext(example_input=torch.randn(1, 1, 8, 8), calibration=torch.randn(4, 1, 8, 8), finetune=None)
    net = cnn_space.knobs[0].apply(small_cnn(), cnn_space.knob_values(cnn_space.knobs[0], values), ctx)
    outputs = model_outputs(net, torch.randn(4, 1, 8, 8), hooks)
    assert len(outputs) == 2 and outputs[-1].shape == (4, 10)
    groups = _param_groups(net, TrainConfig(epochs=1, lr=0.01, hooks=hooks))
    heads = {id(p) for n, p in net.named_parameters() if n.startswith("exits.")}
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    assert {id(p) for p in groups[1]["params"]} == heads and heads.isdisjoint(id(p) for p in groups[0]["params"])
    # alpha 0 (plain cross-entropy) and no exit: no knob changes training
    plain = cnn_space.training_hooks(cnn_space.complete({"distill.alpha": 0.0}))
    assert plain == TrainingHooks()
    assert len(_param_groups(net, TrainConfig(epochs=1, lr=0.01, hooks=plain))) == 1
    assert model_outputs(net, torch.randn(4, 1, 8, 8), plain)[0].shape == (4, 10)


def test_two_knobs_setting_the_loss_is_one_clear_error():
    ce = TrainingHooks(loss=lambda s, t, y: F.cross_entropy(s, y))
    with pytest.raises(SpaceError, match="Knobs 'distill' and 'smooth' both set the training loss"):
        combine_training_hooks([("distill", ce), ("exits", None), ("smooth", ce)])


def test_cost_bound_and_weight_bits_come_from_the_knobs(cnn_space):
    values = cnn_space.complete({"exits.0.enabled": True, "exits.0.threshold": 0.8, "exits.1.threshold": 0.95,
                                 "quant.bits": 4, "quant.mode": "qat", "prune.ratio": 0.3})
    bound = cnn_space.cost_bound_values(values)
    assert bound["exits.0.threshold"] == 0.0 and bound["exits.1.threshold"] == 0.0  # the shortest path
    assert bound["quant.mode"] == "ptq" and bound["quant.bits"] == 4  # measured before any training
    assert {k: v for k, v in bound.items() if "threshold" not in k and k != "quant.mode"} == \
        {k: v for k, v in values.items() if "threshold" not in k and k != "quant.mode"}
    assert values["quant.mode"] == "qat"  # the candidate's own values are left alone
    assert cnn_space.weight_bits(values) == 4 and weight_bits({"quant.bits": 16, "prune.ratio": 0.2}) == 16
    no_quant = Space.for_model(small_cnn(), families=["prune"])
    assert no_quant.weight_bits(no_quant.complete({})) == 32 and weight_bits({"prune.ratio": 0.5}) == 32


def test_a_task_places_the_exits_through_the_knobs_task_options():
    from slimtune.search._task_space import build_space
    from slimtune.tasks import get_task

    digits = get_task("digits")
    space = build_space(dataclasses.replace(digits, extra={**digits.extra, "exits_after": ["blocks.1"]}))
    assert [p.name for p in space.params if p.family == "exits"] == ["exits.0.enabled", "exits.0.threshold"]
    assert "after blocks.1" in space["exits.0.enabled"].doc


# -- the CLI's compact codes -----------------------------------------------------------
VALUES = [
    {"prune.ratio": 0.28, "prune.granularity": "weight", "prune.rewind": True, "quant.bits": 8, "quant.mode": "ptq",
     "distill.temperature": 4.0, "distill.alpha": 0.7, "dsconv.blocks.1.0": True, "dsconv.blocks.0.0": False,
     "lowrank.blocks.0": 0.05, "lowrank.head.2": 0.42, "lowrank.blocks.1": 1.0,
     "exits.1.enabled": True, "exits.1.threshold": 0.9, "exits.0.enabled": False, "exits.0.threshold": 0.7},
    {"prune.ratio": 0.0, "prune.granularity": "channel", "quant.bits": 16, "quant.mode": "qat", "mine.knob": 0.12345},
    {"quant.bits": "4", "quant.mode": "qat", "exits.0.enabled": "true", "exits.0.threshold": "0.5"},
]
NAMES = ["dsconv.blocks.0.0", "dsconv.blocks.1.0", "lowrank.blocks.0", "lowrank.blocks.1", "lowrank.head.2"]
EXPECTED = ["p0.28wr q8ptq T4.0 a0.70 ds{1} lr{0:0.05,2:0.42} ex{1@0.90}", "q16 mine.knob=0.123", "q4qat ex{0@0.50}"]


def test_the_registry_and_the_compact_codes_load_without_torch():
    """``slimtune show`` reads the registered knobs' codes (one registry, declared once by
    ``register_knob``): every registered knob module imports without torch."""
    from slimtune._cli_tables import codes_legend, compact_params

    assert [compact_params(v, NAMES) for v in VALUES] == EXPECTED
    code = ("import sys, json; from slimtune._cli_tables import compact_params, codes_legend, dsconv_legend\n"
            "from slimtune.spaces import knob_families\n"
            f"print(json.dumps([[compact_params(v, {NAMES!r}) for v in {VALUES!r}], codes_legend(), "
            f"dsconv_legend({NAMES!r}), knob_families(), sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3]]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    shown, legend, numbering, registered, torch_modules = json.loads(proc.stdout)
    assert shown == EXPECTED and legend == codes_legend() and torch_modules == []
    assert set(registered) >= {"prune", "quant", "distill", "dsconv", "lowrank", "exits", "cluster"}
    assert legend.startswith("params: p<ratio><w|c>[r] pruning") and "ex{i@threshold,..} early exits" in legend
    assert numbering == "ds{i}: 0 = blocks.0.0, 1 = blocks.1.0; lr{i}: 0 = blocks.0, 1 = blocks.1, 2 = head.2"


# -- "stopped early", never "pruned" ----------------------------------------------------
def test_an_early_stopped_trial_reads_stopped_early():
    from slimtune._cli_tables import table_lines
    from slimtune._vocabulary import state_phrase
    from slimtune.widgets._axes import hover_text, trial_title
    from slimtune.widgets._details import details_html

    row = {"trial": 7, "state": "PRUNED", "params": {"quant.bits": 8}, "stopped_reason": "cannot reach the front"}
    assert state_phrase("PRUNED") == "stopped early" and state_phrase("FAIL") == "failed"
    assert trial_title(row) == "trial 7 (stopped early: cannot reach the front)"
    assert "stopped early" in hover_text(row)
    html = details_html(row)
    assert "<span class='slimtune-badge'>stopped early</span>" in html and "pruned" not in html.lower()
    table = "\n".join(table_lines([row], []))
    assert " stopped " in table and "pruned" not in table.lower()


# -- a knob from a test file -----------------------------------------------------------
CALLS: dict[str, list[Any]] = {"loss": [], "bound": []}


class LabelSmoothing(Knob):
    """A throwaway knob: label smoothing in training (``smooth.eps``), its own compact
    code and summary, and a cost bound that leaves the structure alone."""

    family = "smooth"
    title = "Label smoothing"
    stage = "training"
    compact_legend = "s<eps> label smoothing"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        return f"s{float(values['smooth.eps']):.2f}" if values.get("smooth.eps") else ""

    def params(self, model):
        return [Param("smooth.eps", "float", 0.1, low=0.0, high=0.3, doc="label smoothing of the hard targets")]

    def summary(self, values):
        return f"smoothing {float(values.get('smooth.eps', 0)):.2g}" if values.get("smooth.eps") else ""

    def training(self, values):
        eps = float(values["smooth.eps"])

        def loss(student, teacher, labels):
            CALLS["loss"].append(eps)
            return F.cross_entropy(student, labels, label_smoothing=eps)

        return TrainingHooks(loss=loss) if eps > 0 else None

    def cost_bound_values(self, values):
        CALLS["bound"].append(dict(values))
        return dict(values)


@pytest.fixture()
def smoothing_registered(monkeypatch):
    """``LabelSmoothing`` registered for one test (the registry is restored after)."""
    monkeypatch.setattr(_registry, "_KNOBS", dict(_registry._KNOBS))
    register_knob(LabelSmoothing)
    for calls in CALLS.values():
        calls.clear()
    yield


def test_a_knob_registered_from_a_test_file_runs_a_search_with_no_core_edit(smoothing_registered, tmp_path):
    from slimtune._cli_tables import codes_legend, compact_params
    from slimtune.widgets._axes import group_params, params_summary

    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    fixed = {"smooth.eps": 0.2, "distill.alpha": 0.0, "quant.bits": 8, "prune.ratio": 0.0}  # alpha 0: CE is smoothed
    study = Study.create_or_load("toy", storage=storage, task="digits", settings=FAST, seed=0, fixed=fixed)
    assert "smooth.eps" in study.space and "smooth" in [k.family for k in study.space.knobs]
    # a costly but accurate point: the rule measures the candidate's cost bound first, and keeps it
    study.frontier_points = lambda costs: [FrontierPoint(-1, 0.5, {c: 1e12 for c in costs})]
    (row,) = study.optimize(n_trials=1, progress=False, warm_start=False)  # the sampler's draw, not the neighbourhood
    assert row["state"] == "COMPLETE", row.get("error")
    assert row["params"]["smooth.eps"] == 0.2 and row["val_accuracy"] > 0.3
    assert CALLS["loss"] and set(CALLS["loss"]) == {0.2}  # the trainer used the knob's loss
    assert CALLS["bound"] == [{"smooth.eps": 0.2}]  # the evaluator asked its cost bound before training
    # shown without a line of core code: the CLI's codes, the widgets' family and summary
    assert "s0.20" in compact_params(row["params"]).split() and "s<eps> label smoothing" in codes_legend()
    assert ("Label smoothing", [("eps", 0.2)]) in group_params(row["params"])
    assert "smoothing 0.2" in params_summary(row["params"])
    # the stored candidate rebuilds through the knobs
    candidate = study.candidate(row["trial"])
    assert candidate.recipe["weight_bits"] == candidate.weight_bits == 8  # the bits packing and export use
    assert candidate.load()(study.task.data.x_val[:4]).shape == (4, 10)
    # stopped early by an unreachable point: the user reads "stopped early", Optuna keeps PRUNED
    # (before any training: a rejection, which does not use up the budget, so the runner
    # proposes up to its cap of 10 per trial)
    study.frontier_points = lambda costs: [FrontierPoint(-1, 1.0, {c: 0.0 for c in costs})]
    rejected = study.optimize(n_trials=1, progress=False)
    assert len(rejected) == 10 and {r["state"] for r in rejected} == {"PRUNED"}
    stopped = rejected[0]
    with pytest.raises(Exception, match="is stopped early, not COMPLETE"):
        study.candidate(stopped["trial"])
