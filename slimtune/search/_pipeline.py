"""One candidate, end to end: build -> train -> compress -> quantize -> measure.

The order is DESIGN.md's stages: the architecture knobs, then training from the
baseline teacher (with what the knobs change in it, e.g. the distillation loss), then
the compression knobs (which may fine-tune), then the quantization knobs, then a real
measurement of the compiled model on its runtime.  The evaluator asks the space's
knobs at each step and never names one.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from slimtune.search._baseline import Baseline, PlacedBaseline
from slimtune.search._device import TrainingDevice
from slimtune.search._measurement import Measurement
from slimtune.search._pre_measure import PreMeasurement, Thresholded, cautious_latencies, path_thresholds
from slimtune.search._settings import SESSION_SETTINGS, SETTING_RANGES, EvalSettings  # noqa: F401 (imported from here)
from slimtune.search._targets import Target, TargetResult, settings_targets
from slimtune.search._trainer import TrainConfig, score_and_exit_rates, train
from slimtune.spaces.base import LOWERED_STAGES, KnobContext
from slimtune.spaces._lowering import fold_batchnorm, lower
from slimtune.spaces._space import Space
from slimtune.tasks._task import Task

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.spaces.base import WeightEncoding

#: ``should_stop(epoch, val_accuracy, pre) -> reason | None``; called before any
#: training (``epoch`` -1, ``val_accuracy`` None), after each distillation epoch
#: (``0 .. epochs - 1``) and after each recovery epoch of the knobs' fine-tuning
#: (``epochs + r``, r counting every recovery epoch of the candidate), so a search
#: can stop a candidate that cannot reach its frontier.
ShouldStop = Callable[[int, "float | None", "PreMeasurement"], "str | None"]


class _Stopped(Exception):
    """Raised out of a recovery fine-tune (through the knob) when ``should_stop`` says stop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class CandidateResult:
    params: dict[str, Any]
    measurement: Measurement | None
    val_accuracy: float | None
    artifact: bytes | None
    artifact_format: str | None
    recipe: dict[str, Any]
    state_dict: dict[str, torch.Tensor] | None
    train_seconds: float
    total_seconds: float
    pre: PreMeasurement | None = None
    stopped: str | None = None  # the reason when the candidate was stopped early
    info: dict[str, Any] = field(default_factory=dict)
    #: the study's other targets (the first one is ``measurement``), each measured beside its own baseline
    targets: list[TargetResult] = field(default_factory=list)


class Evaluator:
    """Builds and measures candidates of one task and space with fixed settings.

    Example:
        >>> ev = Evaluator(task, space, EvalSettings(), baseline)
        >>> result = ev.evaluate({"prune.ratio": 0.5, "quant.bits": 8})
        >>> result.measurement.latency_ms
    """

    def __init__(self, task: Task, space: Space, settings: EvalSettings, baseline: Baseline,
                 place: TrainingDevice | None = None) -> None:
        self.task = task
        self.space = space
        self.settings = settings
        self.baseline = baseline
        #: where candidates train (``settings.device`` and ``amp`` resolved on this machine)
        self.place = place if place is not None else TrainingDevice.resolve(settings.device, settings.amp)
        # PTQ calibration: the first calibration_size training samples (a stream reads only the batches they fill)
        self.calibration = task.data.train.head(settings.calibration_size).clone()
        self.example_input = task.example_input(1)  # on the CPU (MACs, compiling); knobs get it on their device
        #: where latency is timed: the first target drives the search, the others are measured beside it
        self.targets: list[Target] = settings_targets(settings)
        self._references: dict[str, Any] = {}  # target key -> the baseline compiled there
        self._baseline_measurements: dict[str, Measurement] = {}
        self.on_phase: Callable[[str], None] | None = None  # told "train", "compress", "measure" (slimtune eval)

    def _phase(self, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(name)

    # -- helpers ----------------------------------------------------------------
    def _train_config(self, values: dict[str, Any], epochs: int, lr: float | None = None) -> TrainConfig:
        return TrainConfig(
            epochs=epochs, lr=lr if lr is not None else self.task.lr * self.settings.lr_scale,
            batch_size=self.task.batch_size, seed=self.settings.seed, hooks=self.space.training_hooks(values),
            place=self.place,
        )

    def placed_baseline(self) -> PlacedBaseline:
        """The baseline's model and teacher on the training device."""
        return self.baseline.on(self.place.device)

    def _context(self, values: dict[str, Any],
                 on_recovery_epoch: Callable[[nn.Module], "str | None"] | None = None,
                 device: "torch.device | None" = None) -> KnobContext:
        """The knobs' context, its example input and calibration batch on ``device``
        (default the training device); ``on_recovery_epoch(model) -> stop reason | None``
        is called after each epoch of every recovery fine-tune (a reason ends it with
        :class:`_Stopped`)."""
        data = self.task.data
        where = TrainingDevice(self.place.device if device is None else device)
        teacher = self.placed_baseline().teacher

        recovery = self.task.recovery_epochs if self.settings.finetune_epochs is None else self.settings.finetune_epochs

        def finetune(model: nn.Module, epochs: int | None = None, lr: float | None = None) -> None:
            n = recovery if epochs is None else epochs
            callback = None if on_recovery_epoch is None else (lambda epoch, m: on_recovery_epoch(m))
            _, reason = train(model, data.train, self._train_config(values, n, lr), teacher=teacher,
                              callback=callback)
            if reason:
                raise _Stopped(reason)

        return KnobContext(example_input=where.to_device(self.example_input),
                           calibration=where.to_device(self.calibration), finetune=finetune,
                           finetune_epochs=recovery, seed=self.settings.seed,
                           info={"num_classes": self.task.num_classes, "flags": [], "qat_lr": self.settings.qat_lr})

    def _apply_stage(self, stage: str, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        for knob in self.space.knobs:
            if knob.stage == stage:
                model = knob.apply(model, self.space.knob_values(knob, values), ctx)
        return model

    def _lowered(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        """The compression knobs, then the core lowering (pruning made permanent,
        BatchNorm folded), then the knobs that act on the lowered model."""
        model = self._apply_stage("compression", model, values, ctx)
        info = lower(model, ctx.example_input)
        if info.pop("unfolded_batchnorm"):
            ctx.info.setdefault("flags", []).append("some BatchNorm layers could not be folded into a preceding conv")
        ctx.info["lowering"] = info
        for stage in LOWERED_STAGES:
            model = self._apply_stage(stage, model, values, ctx)
        return model

    def _compile(self, model: nn.Module, bits: int, metadata: dict[str, Any] | None = None,
                 encoding: "WeightEncoding | None" = None, target: Target | None = None):
        """``model`` compiled for ``target`` (default the first: the one the search sees)."""
        from slimtune.search._runtimes import compile_model

        t = target or self.targets[0]
        return compile_model(model, runtime=t.runtime, bits=bits, calibration=self.calibration,
                             threads=t.threads, metadata=metadata, encoding=encoding, batch_size=t.batch_size)

    def artifact_metadata(self, values: dict[str, Any], target: Target | None = None) -> dict[str, Any]:
        """:func:`artifact_metadata` of this task and ``target``'s runtime (default the first)."""
        from slimtune.search._runtimes import get_runtime

        return artifact_metadata(self.task, values, get_runtime((target or self.targets[0]).runtime).artifact_format)

    def _measure(self, model: nn.Module, compiled, bits: int, target: Target | None = None) -> Measurement:
        from slimtune.search._profiling import measure

        t = target or self.targets[0]
        data = self.task.data
        return measure(model, compiled, data.val, None, x_test=data.test, bits=bits,
                       example_input=self.example_input, metric=self.task.metric,
                       reference=self.reference(t), batch_size=t.batch_size, threads=t.threads,
                       warmup=self.settings.latency_warmup, repeats=self.settings.latency_repeats)

    def reference(self, target: Target | None = None):
        """The baseline compiled (fp32) on ``target`` (default the first): timed beside
        every candidate there."""
        t = target or self.targets[0]
        if t.key not in self._references:
            self._references[t.key] = self._compile(copy.deepcopy(self.baseline.model).eval(), 32, target=t)
        return self._references[t.key]

    def baseline_measurement(self, target: Target | None = None) -> Measurement:
        """The baseline measured exactly like a candidate on ``target`` (default the
        first; the frontier's reference point there)."""
        t = target or self.targets[0]
        if t.key not in self._baseline_measurements:
            model = copy.deepcopy(self.baseline.model).eval()
            self._baseline_measurements[t.key] = self._measure(model, self.reference(t), 32, t)
        return self._baseline_measurements[t.key]

    def measure_other_targets(self, model: nn.Module, bits: int, values: dict[str, Any],
                              metadata: dict[str, Any] | None = None,
                              encoding: "WeightEncoding | None" = None) -> list[TargetResult]:
        """``model`` compiled and measured on each target but the first, beside the
        baseline timed there in the same run; a target where that fails gets its
        one-line error (the trial keeps its other measurements)."""
        out = []
        for t in self.targets[1:]:
            try:
                meta = {**self.artifact_metadata(values, t), **(metadata or {}), "target": t.key}
                with torch.random.fork_rng():
                    compiled = self._compile(model, bits, _jsonable(meta), encoding, target=t)
                m = self._measure(model, compiled, bits, t)
                out.append(TargetResult(t.key, m, compiled.artifact, compiled.artifact_format))
            except Exception as exc:  # noqa: BLE001 - one target failing leaves the trial's others
                out.append(TargetResult(t.key, None, error=f"{type(exc).__name__}: {str(exc).strip()[:300]}"))
        return out

    # -- the pipeline ------------------------------------------------------------
    def build_architecture(self, values: dict[str, Any], ctx: KnobContext | None = None, *,
                           device: "torch.device | None" = None) -> nn.Module:
        """The baseline copy on ``device`` (default the training device; ``ctx``'s
        tensors must be there too) with the architecture knobs (DS-conv, exits) applied."""
        device = self.place.device if device is None else torch.device(device)
        ctx = ctx or self._context(values, device=device)
        source = self.placed_baseline().model if device == self.place.device else self.baseline.model
        model = copy.deepcopy(source).to(device)
        return self._apply_stage("architecture", model, values, ctx)

    def pre_measure(self, values: dict[str, Any]) -> PreMeasurement:
        """Latency, MACs and size of the compressed structure before any training."""
        from slimtune.search._macs import count_macs
        from slimtune.search._runtimes import exit_segments
        from slimtune.search.packed import packed_size

        cpu = torch.device("cpu")  # structure only, compiled and timed there: no training
        ctx = self._context(values, device=cpu)
        ctx.finetune = lambda *a, **k: None
        shortest = self.space.cost_bound_values(values)  # e.g. everyone leaves at the first exit
        with torch.random.fork_rng():
            model = self.build_architecture(shortest, ctx, device=cpu)
            model = self._lowered(model, shortest, ctx)
            model.eval()
            bits = self.space.weight_bits(values)
            compiled = self._compile(model, bits, encoding=self.space.weight_encoding(values))
        x = self.task.data.val.head(1 if compiled.has_exits else self.settings.batch_size)  # exits: batch 1 only
        timed = {"candidate": compiled}
        path_names: list[str] = []  # which timing is each exit path's
        path_macs: tuple[int, ...] = ()
        segments = exit_segments(model) if compiled.has_exits else None
        if segments:  # each exit path on its own, through the dynamic-model protocol (segments())
            current = [threshold for _, _, threshold in segments[:-1]]
            for k, thresholds in enumerate(path_thresholds(len(segments) - 1)):
                if current == thresholds:  # the structure compiled above is this path (the shortest)
                    path_names.append("candidate")
                    continue
                with torch.random.fork_rng():
                    timed[f"path {k}"] = self._compile(Thresholded(segments, thresholds), bits)
                path_names.append(f"path {k}")
            path_macs = tuple(count_macs(model, self.example_input, [float(i == k) for i in range(len(path_names))])
                              for k in range(len(path_names)))
        timed["reference"] = self.reference()  # the baseline, timed interleaved: costs as same-run ratios
        ms = cautious_latencies(timed, x, self.settings.threads)
        return PreMeasurement(latency_ms=ms["candidate"],
                              macs=path_macs[0] if path_macs else count_macs(model, self.example_input),
                              size_bytes=packed_size(compiled.artifact, artifact_format=compiled.artifact_format,
                                                     bits=bits, encoding=compiled.weight_encoding),
                              path_latency_ms=tuple(ms[name] for name in path_names),
                              path_macs=path_macs, reference_latency_ms=ms["reference"])

    @property
    def full_epochs(self) -> int:
        """Distillation epochs of a full-fidelity candidate (the settings', else the task's)."""
        return int(self.task.finetune_epochs if self.settings.epochs is None else self.settings.epochs)

    def evaluate(self, values: dict[str, Any], *, should_stop: ShouldStop | None = None,
                 metadata: dict[str, Any] | None = None, epochs: int | None = None) -> CandidateResult:
        """Build, train, compress and measure one candidate; ``metadata`` (e.g. the study
        and trial) goes into the artifact beside :meth:`artifact_metadata`.  ``epochs``:
        distillation epochs (default :attr:`full_epochs`; 0 for a training-free
        candidate, :mod:`~slimtune.search._fidelity`)."""
        values = self.space.complete(values)
        started = time.perf_counter()
        torch.manual_seed(self.settings.seed)
        pre = self.pre_measure(values) if should_stop is not None else None
        if should_stop is not None:  # before any training: its costs are known
            reason = should_stop(-1, None, pre)
            if reason:
                return CandidateResult(values, None, None, None, None, {}, None, 0.0, time.perf_counter() - started,
                                       pre, stopped=reason, info={"val_accuracy_per_epoch": [], "epochs_trained": 0})
        data = self.task.data
        epochs = self.full_epochs if epochs is None else int(epochs)
        val_acc: list[float] = []
        recovery_acc: list[float] = []

        def on_recovery_epoch(m: nn.Module) -> str | None:
            acc, rates = score_and_exit_rates(m, data.val, self.task.metric)
            recovery_acc.append(acc)
            m.train()
            return should_stop(epochs + len(recovery_acc) - 1, acc, pre.at_exit_rates(rates))

        ctx = self._context(values, on_recovery_epoch if should_stop is not None else None)
        model = self.build_architecture(values, ctx)

        def on_epoch(epoch: int, m: nn.Module) -> str | None:
            if epoch == 0:
                ctx.info["rewind_state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
            acc, rates = score_and_exit_rates(m, data.val, self.task.metric)
            val_acc.append(acc)
            m.train()
            if should_stop is not None:  # an early-exit candidate's costs at the exit rates it has now
                return should_stop(epoch, acc, pre.at_exit_rates(rates))
            return None

        t0 = time.perf_counter()
        self._phase("train")
        _, reason = train(model, data.train, self._train_config(values, epochs),
                          teacher=self.placed_baseline().teacher, callback=on_epoch)
        if reason:
            return CandidateResult(values, None, val_acc[-1] if val_acc else None, None, None, {}, None,
                                   time.perf_counter() - t0, time.perf_counter() - started, pre, stopped=reason,
                                   info={"val_accuracy_per_epoch": val_acc, "epochs_trained": len(val_acc)})
        self._phase("compress")
        try:
            model = self._lowered(model, values, ctx)
        except _Stopped as stop:
            return CandidateResult(values, None, recovery_acc[-1], None, None, {}, None, time.perf_counter() - t0,
                                   time.perf_counter() - started, pre, stopped=stop.reason,
                                   info={"val_accuracy_per_epoch": val_acc,
                                         "val_accuracy_per_recovery_epoch": recovery_acc,
                                         "epochs_trained": len(val_acc) + len(recovery_acc)})
        train_seconds = time.perf_counter() - t0
        model = model.eval().cpu()  # compiled and timed on the deployment target, from the CPU
        self._phase("measure")
        bits = self.space.weight_bits(values)
        encoding = self.space.weight_encoding(values)
        artifact_meta = {**self.artifact_metadata(values), **(metadata or {})}
        compiled = self._compile(model, bits, _jsonable(artifact_meta), encoding)
        measurement = self._measure(model, compiled, bits)
        flags = tuple(dict.fromkeys([*measurement.flags, *ctx.info.get("flags", [])]))
        measurement = Measurement.from_dict({**measurement.to_dict(), "flags": list(flags)})
        recipe: dict[str, Any] = {"values": values, "weight_bits": bits, "bn_folded": True,  # lowered
                                  **({"weight_encoding": encoding.to_dict()} if encoding else {})}
        for knob in self.space.knobs:  # what each knob needs to rebuild the stored model
            recipe.update(knob.recipe(ctx.info))
        info = {k: v for k, v in ctx.info.items() if k not in ("rewind_state", "flags")}
        info["val_accuracy_per_epoch"] = val_acc
        if recovery_acc:
            info["val_accuracy_per_recovery_epoch"] = recovery_acc
        info["artifact_metadata"] = artifact_meta  # also inside an ONNX artifact's metadata_props
        info["trained_on"] = self.place.describe()  # where it trained; timed_on: where its latency was measured
        info["timed_on"] = timed_on(measurement)
        others = self.measure_other_targets(model, bits, values, metadata, encoding)
        # the objective is the timed artifact's validation accuracy (measurement.accuracy) on the first target
        return CandidateResult(values, measurement, measurement.accuracy, compiled.artifact,
                               compiled.artifact_format, recipe, {k: v.detach().clone() for k, v in model.state_dict().items()},
                               train_seconds, time.perf_counter() - started, pre, info=_jsonable(info), targets=others)

    def rebuild(self, recipe: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """A runnable module from a stored recipe and weights, without retraining: the
        architecture from the values, then each knob's :meth:`~slimtune.spaces.Knob.rebuild`
        in pipeline order, the lowering (BatchNorm folded) before the lowered stages'."""
        values = self.space.complete(recipe["values"]) if recipe.get("values") else {}
        cpu = torch.device("cpu")
        ctx = self._context(values, device=cpu)
        model = self.build_architecture(values, ctx, device=cpu)
        lowered = False
        for knob in self.space.knobs:
            if knob.stage in LOWERED_STAGES and not lowered:
                model, lowered = _rebuild_lowering(model, recipe, self.example_input), True
            model = knob.rebuild(model, recipe, self.example_input)
        if not lowered:
            model = _rebuild_lowering(model, recipe, self.example_input)
        model.load_state_dict(state_dict)
        return model.eval()


def artifact_metadata(task: Task, values: dict[str, Any], timed_format: str) -> dict[str, Any]:
    """What an exported artifact says about itself: the task's preprocessing and class
    count, the parameters, the format and slimtune's version (the runtime adds how to
    feed it; the search adds the study and trial)."""
    from slimtune._version import __version__

    return {"preprocessing": task.preprocessing or ("not stated by the task: feed inputs exactly as the task's "
                                                    "tensors hold them"),
            "num_classes": task.num_classes, "task": task.name, "params": dict(values),
            "timed_format": timed_format, "slimtune_version": __version__}


def timed_on(m: Measurement) -> dict[str, Any]:
    """Where a measurement's latency was timed: the runtime on this machine's CPU, with
    the threads, batch size and fingerprint id (the training device never changes it)."""
    import socket

    return {"runtime": m.runtime, "precision": m.precision, "host": socket.gethostname(),
            "cpu": m.fingerprint.get("cpu"), "threads": m.threads, "batch_size": m.batch_size,
            "fingerprint_id": m.fingerprint_id}


def _rebuild_lowering(model: nn.Module, recipe: dict[str, Any], example_input: torch.Tensor) -> nn.Module:
    """The stored model's lowering: BatchNorm folded when the recipe says it was."""
    return fold_batchnorm(model.eval(), example_input) if recipe.get("bn_folded") else model


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() < 64 else f"tensor{tuple(value.shape)}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
