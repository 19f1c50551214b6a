"""The parameter and knob abstractions of the joint space.

A *knob* is one compression family.  Like an Optuna sampler reads distributions,
search backends read a knob's parameters as data (:class:`Param`); the knob itself
never calls ``trial.suggest_*``.  A knob transforms a model in :meth:`Knob.apply`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Sequence

from slimtune._names import close_matches  # noqa: F401  (the knobs import it from here)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

ParamKind = Literal["float", "int", "categorical", "bool"]

#: ``loss(student_logits, teacher_logits or None, labels) -> scalar``: the training loss
#: of one output (the teacher's logits are None where there is no teacher).
Loss = Callable[["torch.Tensor", "torch.Tensor | None", "torch.Tensor"], "torch.Tensor"]

#: Pipeline stages, in the order of DESIGN.md.  Between "compression" and
#: "quantization" the core *lowers* the model (pruning made permanent, BatchNorm folded:
#: :mod:`slimtune.spaces._lowering`); knobs of :data:`LOWERED_STAGES` act on the lowered
#: model, "encoding" last (e.g. weight sharing, which declares how the weights are stored).
STAGES = ("architecture", "training", "compression", "quantization", "encoding")
LOWERED_STAGES = ("quantization", "encoding")


class SpaceError(ValueError):
    """Bad input about the space: unknown name, value outside its domain, ..."""


@dataclass(frozen=True)
class Param:
    """One parameter of the joint space, as data.

    ``kind`` is ``float`` (``low``/``high``, optional ``log``), ``int``, ``categorical``
    (``choices``) or ``bool``.
    """

    name: str
    kind: ParamKind
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"Param {self.name!r} needs low <= high, got {self.low!r}, {self.high!r}.")
            if self.log and self.low <= 0:
                raise ValueError(f"Param {self.name!r} is log-scaled and needs low > 0, got {self.low!r}.")
        if self.kind == "categorical" and not self.choices:
            raise ValueError(f"Param {self.name!r} is categorical and needs choices.")

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def domain(self) -> dict[str, Any]:
        """The domain as a JSON-friendly dict."""
        if self.kind in ("float", "int"):
            return {"low": self.low, "high": self.high, "log": self.log}
        if self.kind == "bool":
            return {"choices": [False, True]}
        return {"choices": list(self.choices)}

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (possibly a string from the command line) into this
        parameter's type and check it lies in the domain.

        Raises:
            SpaceError: with the parameter name, the value and the domain.
        """
        try:
            if self.kind == "bool":
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("1", "true", "yes", "on"):
                        return True
                    if low in ("0", "false", "no", "off"):
                        return False
                    raise ValueError
                if isinstance(value, (bool, int)) and value in (0, 1, True, False):
                    return bool(value)
                raise ValueError
            if self.kind == "categorical":
                for choice in self.choices:
                    if value == choice or str(value) == str(choice):
                        return choice
                raise ValueError
            number = float(value)
            if self.kind == "int":
                if number != int(number):
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError):
            raise SpaceError(
                f"`{self.name}` must be {self._describe()}, but got {value!r}."
            ) from None
        if not (self.low <= number <= self.high):  # type: ignore[operator]
            raise SpaceError(f"`{self.name}` must be {self._describe()}, but got {value!r}.")
        return number

    def _describe(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        return f"a{'n integer' if self.kind == 'int' else ' number'} in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class WeightEncoding:
    """How a knob stores the weights, beside the bits they run at
    (:meth:`Knob.weight_encoding`); the runtimes and the packed file read it.

    ``kind`` names a packed-file encoding: ``"codebook"`` = each Conv/Linear weight takes
    at most ``entries`` distinct values per layer, stored as indices of
    ``ceil(log2(entries))`` bits plus the values (:mod:`slimtune.search.packed`).
    """

    kind: str
    entries: int

    def __post_init__(self) -> None:
        if self.kind != "codebook":
            raise ValueError(f"`kind` must be 'codebook', but got {self.kind!r}.")
        if not 2 <= int(self.entries) <= 2 ** 16:
            raise ValueError(f"`entries` must be in [2, 65536], but got {self.entries!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "entries": int(self.entries)}

    @classmethod
    def from_dict(cls, data: "Mapping[str, Any] | None") -> "WeightEncoding | None":
        return None if not data else cls(str(data["kind"]), int(data["entries"]))


@dataclass
class KnobContext:
    """What a knob may use while transforming a model.

    ``finetune(model, epochs, lr)`` trains ``model`` in place with the candidate's
    distillation settings against the baseline teacher; ``calibration`` is a batch of
    training inputs (never test data).
    """

    example_input: "torch.Tensor"
    calibration: "torch.Tensor"
    finetune: Callable[..., Any]
    finetune_epochs: int = 1
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # knobs report what they did here


@dataclass(frozen=True)
class TrainingHooks:
    """What a knob changes in the training of a candidate (:meth:`Knob.training`);
    every field is optional.

    Attributes:
        loss: the loss of each output (default: cross-entropy on the labels); at most one
            knob of a space sets it (distillation's).
        lr_scale: ``lr_scale(parameter_name) -> multiplier or None``: a learning-rate
            multiplier for some parameters (e.g. freshly attached exit heads); None
            leaves a parameter to the other knobs (default 1).
        outputs: ``outputs(model, x) -> list of logits or None``: every output the
            student is trained on, the final head's last (e.g. each early exit, then the
            final head); None where the model is not this knob's (default: ``[model(x)]``).
    """

    loss: Loss | None = None
    lr_scale: Callable[[str], "float | None"] | None = None
    outputs: Callable[["nn.Module", "torch.Tensor"], "Sequence[torch.Tensor] | None"] | None = None


class Knob(ABC):
    """One compression family of the joint space.

    Subclasses set ``family`` (the parameter prefix) and ``stage`` (one of
    :data:`STAGES`), return their parameters in :meth:`params` and transform a model
    in :meth:`apply`.  Register them with :func:`slimtune.spaces.register_knob`.
    The optional hooks below tell the core the rest (display, training, the cost bound
    before training, the recipe to rebuild, recovery epochs, weight bits and encoding),
    so the core never names a knob.

    A knob module must import without torch (import it inside the methods, or keep model
    code in a helper module they import): ``slimtune show`` reads the registered classes'
    codes and must start without torch.  ``tests/test_knob_hooks.py`` checks every
    registered knob.
    """

    family: ClassVar[str]
    stage: ClassVar[str]
    title: ClassVar[str] = ""  # how people read the family (the dashboard's group title); default: family
    #: The CLI's compact code for this family, explained under its tables (e.g.
    #: ``"q<bits>[ptq|qat] quantization"``); empty: parameters are shown as ``name=value``.
    compact_legend: ClassVar[str] = ""
    #: The code whose ``{i}`` numbers this family's parameters in the space's order (the
    #: tables then say which is which, e.g. ``ds{i}: 0 = blocks.0.0``).
    compact_index: ClassVar[str] = ""

    @classmethod
    def for_values(cls) -> "Knob":
        """An instance whose value hooks (:meth:`inactive`, :meth:`summary`,
        :meth:`recovery_passes`, :meth:`weight_bits`, :meth:`weight_encoding`) read
        stored values, e.g. for tables and exports; default ``cls()``.  Override it if
        the constructor needs arguments."""
        return cls()

    @classmethod
    def task_options(cls, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for this knob taken from a task's ``extra`` settings (e.g.
        where early exits go).  Default: none."""
        return {}

    @abstractmethod
    def params(self, model: "nn.Module") -> list[Param]:
        """The parameters this knob offers for ``model`` (may be empty)."""

    def unavailable(self, model: "nn.Module") -> str | None:
        """Why this knob offers no parameter for ``model`` (shown by the space), or
        None."""
        return None

    def apply(self, model: "nn.Module", values: dict[str, Any], ctx: KnobContext) -> "nn.Module":
        """Transform ``model`` with this knob's ``values`` (full parameter names).

        The default does nothing (knobs that only configure training)."""
        return model

    def inactive(self, values: Mapping[str, Any]) -> set[str]:
        """Names among ``values`` (this knob's, full names) that have no effect given
        the others (e.g. pruning options at ratio 0); tables hide them.  Default: none."""
        return set()

    def recipe(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """What a stored candidate needs, beyond its parameter values, to be rebuilt
        without training (read from what :meth:`apply` wrote into ``ctx.info``; JSON).
        Default: nothing (architecture knobs are re-applied from the values)."""
        return {}

    def rebuild(self, model: "nn.Module", recipe: Mapping[str, Any], example_input: "torch.Tensor") -> "nn.Module":
        """Give ``model`` (the rebuilt architecture, earlier stages already rebuilt) the
        structure this knob left, from ``recipe``, so that the stored weights load.
        Default: unchanged."""
        return model

    def recovery_passes(self, values: Mapping[str, Any]) -> int:
        """How many recovery fine-tunes (of the task's recovery epochs each) this knob
        runs after distillation for ``values`` (pruning's fine-tuning, QAT); early
        stopping counts them as training still to come.  Default: none."""
        return 0

    def summary(self, values: Mapping[str, Any]) -> str:
        """A few words saying what ``values`` (this knob's, full names) do, for hover
        text and the dashboard's table; empty when they leave the model alone (the
        default)."""
        return ""

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        """``values`` (this knob's, full names) in the CLI's compact code (see
        :attr:`compact_legend`); ``names`` are this family's parameter names in the
        space's order (for :attr:`compact_index`).  Empty when they leave the model alone.
        Default: the family's parameters are shown as ``name=value`` instead."""
        return ""

    def training(self, values: Mapping[str, Any]) -> TrainingHooks | None:
        """What ``values`` (this knob's, full names) change in every training run of
        the candidate (distillation and the recovery fine-tunes): its loss, learning
        rates, outputs.  Default: nothing."""
        return None

    def cost_bound_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """This knob's values for the structure that is built and measured before
        training: its cost must bound the trained candidate's from below (early
        stopping compares it with the frontier), e.g. every enabled exit at threshold 0
        (all samples leave at the first exit).  Default: ``values`` unchanged."""
        return dict(values)

    def trial_values(self, params: Sequence[Param]) -> list[dict[str, Any]]:
        """Representative settings of this family for ``params`` (its parameters for one
        model), tried on the model (structure only) before a space offers the family.
        Default: every switch on, every number whose default is an end of its range
        (off) at the middle of the range, others at their defaults; once with each
        categorical at its default and once at the choice farthest from it (e.g.
        ``weight`` and ``channel`` pruning, 32 and 2 bits)."""
        base: dict[str, Any] = {}
        for p in params:
            if p.kind == "bool":
                base[p.name] = True
            elif p.kind in ("float", "int") and p.default in (p.low, p.high):
                middle = (float(p.low) + float(p.high)) / 2  # type: ignore[arg-type]
                base[p.name] = int(round(middle)) if p.kind == "int" else middle
            else:
                base[p.name] = p.default
        farthest = {p.name: max(p.choices, key=lambda c: abs(p.choices.index(c) - p.choices.index(p.default)))
                    for p in params if p.kind == "categorical" and p.default in p.choices and len(p.choices) > 1}
        return [base, {**base, **farthest}] if farthest else [base]

    def training_free_values(self, params: Sequence[Param]) -> list[dict[str, Any]]:
        """Settings of this family that need no training at all (each a few parameters;
        every other stays at its default: the baseline), tried first in a new study in
        seconds, as its rung 0 (:mod:`slimtune.search._fidelity`).  Default: none."""
        return []

    def weight_bits(self, values: Mapping[str, Any]) -> int | None:
        """The bits the runtime compiles the weights at for ``values`` (quantization's
        ``quant.bits``), or None when this knob does not quantize (the default)."""
        return None

    def weight_encoding(self, values: Mapping[str, Any]) -> WeightEncoding | None:
        """How the weights are stored for ``values`` beyond their bits (e.g. a codebook
        of shared values per layer), or None (the default): the packed file stores
        them that way and the artifact says so."""
        return None


def replace_module(model: "nn.Module", name: str, new: "nn.Module") -> None:
    """Put ``new`` where the submodule called ``name`` (a qualified name) is."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)

