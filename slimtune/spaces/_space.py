"""The Space: the knobs composed for one model, in pipeline order."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from slimtune.spaces.base import STAGES, Knob, Param, SpaceError, TrainingHooks, WeightEncoding, close_matches
from slimtune.spaces._registry import get_knob, knob_families

if TYPE_CHECKING:  # pragma: no cover - the registry and the space import without torch
    from torch import nn


class Space:
    """The joint compression space of one model.

    Args:
        knobs: the knob instances (default: every registered knob).
        model: the baseline model; knobs such as ``dsconv`` and ``exits`` derive their
            parameters from it.
        fixed: parameters held at a value (not searched), by full name.

    Example:
        >>> space = Space.for_model(model, fixed={"prune.granularity": "channel"})
        >>> values = space.complete({"quant.bits": 8})
    """

    def __init__(self, knobs: Iterable[Knob], model: nn.Module, fixed: Mapping[str, Any] | None = None) -> None:
        self.knobs = sorted(knobs, key=lambda k: STAGES.index(k.stage))
        self._params: dict[str, Param] = {}
        self._knob_of: dict[str, Knob] = {}
        #: ``{family: reason}`` for the knobs that offer no parameter for this model.
        self.omitted: dict[str, str] = {}
        for knob in self.knobs:
            params = knob.params(model)
            if not params:
                self.omitted[knob.family] = knob.unavailable(model) or "no parameter for this model"
            for param in params:
                if param.name in self._params:
                    raise ValueError(f"Parameter {param.name!r} is defined by two knobs.")
                self._params[param.name] = param
                self._knob_of[param.name] = knob
        self.fixed: dict[str, Any] = self.check(dict(fixed or {}))

    @classmethod
    def for_model(cls, model: nn.Module, *, families: Iterable[str] | None = None, fixed: Mapping[str, Any] | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> "Space":
        """Every registered knob (or ``families``) for ``model``; ``options`` passes
        keyword arguments to a family's knob, e.g. ``{"exits": {"exits_after": ["layer1"]}}``."""
        names = list(families) if families is not None else knob_families()
        options = options or {}
        return cls([get_knob(name)(**dict(options.get(name, {}))) for name in names], model, fixed)

    # -- the parameters as data -------------------------------------------------
    @property
    def params(self) -> list[Param]:
        """Every parameter, fixed ones included, in pipeline order."""
        return list(self._params.values())

    @property
    def searched(self) -> list[Param]:
        """The parameters a backend samples (not fixed)."""
        return [p for p in self._params.values() if p.name not in self.fixed]

    def __getitem__(self, name: str) -> Param:
        self._check_name(name)
        return self._params[name]

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def _check_name(self, name: str) -> None:
        if name in self._params:
            return
        family = name.split(".", 1)[0]
        if family in self.omitted:
            raise SpaceError(f"`{name}`: the space offers no {family} parameter: {self.omitted[family]}.")
        raise SpaceError(f"Unknown parameter {name!r}." + close_matches(name, list(self._params)))

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check names and domains; return the values coerced to their types."""
        out = {}
        for name, value in values.items():
            self._check_name(name)
            out[name] = self._params[name].coerce(value)
        return out

    def complete(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Checked values with fixed values and defaults filled in, in pipeline order."""
        given = self.check(values)
        for name, value in self.fixed.items():
            if name in given and given[name] != value:
                raise SpaceError(f"`{name}` is fixed to {value!r} in this space, but got {given[name]!r}.")
        merged = {**self.fixed, **given}
        return {name: merged.get(name, p.default) for name, p in self._params.items()}

    def knob_values(self, knob: Knob, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if self._knob_of.get(k) is knob}

    def knob_params(self, knob: Knob) -> list[Param]:
        """The parameters ``knob`` offers in this space, in order."""
        return [p for name, p in self._params.items() if self._knob_of[name] is knob]

    def without(self, reasons: Mapping[str, str]) -> "Space":
        """This space without the families in ``reasons`` (``{family: why}``, e.g.
        those that failed when tried on the model): they join :attr:`omitted`.

        Raises:
            SpaceError: a parameter of a left-out family is fixed.
        """
        if not reasons:
            return self
        fixed = [name for name in self.fixed if self._knob_of[name].family in reasons]
        if fixed:
            family = self._knob_of[fixed[0]].family
            raise SpaceError(f"`{fixed[0]}` is fixed, but the space offers no {family} parameter for this model: "
                             f"{reasons[family]}.")
        out = copy.copy(self)
        out.knobs = [k for k in self.knobs if k.family not in reasons]
        out._params = {n: p for n, p in self._params.items() if self._knob_of[n].family not in reasons}
        out._knob_of = {n: k for n, k in self._knob_of.items() if n in out._params}
        out.omitted = {**self.omitted, **{f: r for f, r in reasons.items() if f not in self.omitted}}
        return out

    # -- what the knobs say about a candidate ----------------------------------------
    def training_hooks(self, values: Mapping[str, Any]) -> TrainingHooks:
        """The knobs' :meth:`~Knob.training` hooks for ``values``, combined."""
        return combine_training_hooks([(knob.family, knob.training(self.knob_values(knob, values)))
                                       for knob in self.knobs])

    def cost_bound_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` with each knob's :meth:`~Knob.cost_bound_values`: the structure
        measured before training, whose cost bounds the candidate's from below."""
        out = dict(values)
        for knob in self.knobs:
            out.update(knob.cost_bound_values(self.knob_values(knob, values)))
        return out

    def weight_bits(self, values: Mapping[str, Any]) -> int:
        """The bits the runtime compiles the weights at (:meth:`Knob.weight_bits`; 32
        when no knob quantizes)."""
        return _fewest_bits((knob, self.knob_values(knob, values)) for knob in self.knobs)

    def weight_encoding(self, values: Mapping[str, Any]) -> WeightEncoding | None:
        """How the weights are stored beyond their bits (:meth:`Knob.weight_encoding`),
        or None."""
        return _one_encoding((knob, self.knob_values(knob, values)) for knob in self.knobs)

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "params": [
                {"name": p.name, "kind": p.kind, "default": p.default, **p.domain(), "fixed": p.name in self.fixed,
                 **({"value": self.fixed[p.name]} if p.name in self.fixed else {}), "doc": p.doc}
                for p in self._params.values()
            ],
            **({"omitted": dict(self.omitted)} if self.omitted else {}),
        }

    def to_nni(self) -> dict[str, dict[str, Any]]:
        """This space in NNI's search-space format (searched parameters only)."""
        from slimtune.spaces._nni_format import to_nni

        return to_nni(self)

    def from_nni(self, proposal: Mapping[str, Any]) -> dict[str, Any]:
        """Values proposed by an NNI tuner, back in this space's names and types."""
        from slimtune.spaces._nni_format import from_nni

        return from_nni(self, proposal)

    def fingerprint(self) -> str:
        """A hash of the parameter names, kinds, domains, defaults and fixed values (to
        check a resumed study searches the same space); their documentation is left
        out, so rewording a parameter's help never orphans a study."""
        return space_fingerprint(self.to_dict()["params"])

    def __repr__(self) -> str:
        return f"Space({len(self.searched)} searched, {len(self.fixed)} fixed: {', '.join(self._params)})"


def space_fingerprint(params: Iterable[Mapping[str, Any]]) -> str:
    """:meth:`Space.fingerprint` of parameters as ``Space.to_dict()["params"]`` lists
    them (also for a space stored by a study)."""
    content = [{k: v for k, v in p.items() if k != "doc"} for p in params]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _by_knob(values: Mapping[str, Any]) -> list[tuple[Knob, dict[str, Any]]]:
    """Every registered knob (pipeline order) with the values of its family."""
    knobs = sorted((get_knob(name).for_values() for name in knob_families()), key=lambda k: STAGES.index(k.stage))
    out = []
    for knob in knobs:
        mine = {k: v for k, v in values.items() if str(k).split(".", 1)[0] == knob.family}
        if mine:
            out.append((knob, mine))
    return out


def inactive_params(values: Mapping[str, Any]) -> set[str]:
    """Parameters whose value has no effect given the others, as each knob says
    (:meth:`Knob.inactive`: e.g. the threshold of a disabled exit, pruning options at
    ratio 0, the quantization mode at 16/32 bits)."""
    out: set[str] = set()
    for knob, mine in _by_knob(values):
        out |= knob.inactive(mine)
    return out


def recovery_passes(values: Mapping[str, Any]) -> int:
    """Recovery fine-tunes that follow distillation for ``values``, as the knobs say
    (:meth:`Knob.recovery_passes`: pruning's fine-tuning, QAT)."""
    return sum(knob.recovery_passes(mine) for knob, mine in _by_knob(values))


def summaries(values: Mapping[str, Any]) -> list[str]:
    """What the values do, a few words per knob that changes the model
    (:meth:`Knob.summary`), in pipeline order."""
    return [text for knob, mine in _by_knob(values) if (text := knob.summary(mine))]


def weight_bits(values: Mapping[str, Any]) -> int:
    """:meth:`Space.weight_bits` of stored ``values``, as the registered knobs say."""
    return _fewest_bits(_by_knob(values))


def weight_encoding(values: Mapping[str, Any]) -> WeightEncoding | None:
    """:meth:`Space.weight_encoding` of stored ``values``, as the registered knobs say."""
    return _one_encoding(_by_knob(values))


def _one_encoding(pairs: Iterable[tuple[Knob, Mapping[str, Any]]]) -> WeightEncoding | None:
    found = [(knob.family, e) for knob, mine in pairs if (e := knob.weight_encoding(mine)) is not None]
    if len(found) > 1:
        raise SpaceError(f"Knobs {found[0][0]!r} and {found[1][0]!r} both declare how the weights are stored; "
                         "a candidate can take its weight encoding from one knob only.")
    return found[0][1] if found else None


def _fewest_bits(pairs: Iterable[tuple[Knob, Mapping[str, Any]]]) -> int:
    bits = [b for knob, mine in pairs if (b := knob.weight_bits(mine)) is not None]
    return min(bits, default=32)


def combine_training_hooks(hooks: Iterable[tuple[str, TrainingHooks | None]]) -> TrainingHooks:
    """One :class:`TrainingHooks` from several knobs' (``(family, hooks)`` in pipeline
    order): the loss and the outputs come from the one knob that sets them; a
    parameter's learning-rate multiplier from the first knob that gives one.

    Raises:
        SpaceError: two knobs set the loss, or two the outputs.
    """
    owner: dict[str, str] = {}
    loss = outputs = None
    scales = []
    for family, hook in hooks:
        if hook is None:
            continue
        for field_name in ("loss", "outputs"):
            if getattr(hook, field_name) is None:
                continue
            if field_name in owner:
                raise SpaceError(f"Knobs {owner[field_name]!r} and {family!r} both set the training {field_name} "
                                 "for these values; a candidate can take it from one knob only (fix the other's "
                                 "parameters so that it sets none, or leave its family out of the space).")
            owner[field_name] = family
        loss = hook.loss or loss
        outputs = hook.outputs or outputs
        if hook.lr_scale is not None:
            scales.append(hook.lr_scale)
    if not scales:
        return TrainingHooks(loss=loss, outputs=outputs)

    def lr_scale(name: str) -> float | None:
        return next((scale for fn in scales if (scale := fn(name)) is not None), None)

    return TrainingHooks(loss=loss, lr_scale=lr_scale, outputs=outputs)
