"""The joint compression space: one module per knob, composed by :class:`Space`."""

from slimtune.spaces.base import (LOWERED_STAGES, STAGES, Knob, KnobContext, Param, SpaceError, TrainingHooks,
                                  WeightEncoding)
from slimtune.spaces._registry import get_knob, knob_classes, knob_families, register_knob

# One import line per knob module registers it (each imports without torch).  Knobs run
# in the order of their stage (STAGES), and in this order within a stage; the CLI's
# compact codes follow this order.
from slimtune.spaces import pruning as _pruning  # noqa: F401,E402
from slimtune.spaces import quantization as _quantization  # noqa: F401,E402
from slimtune.spaces import distillation as _distillation  # noqa: F401,E402
from slimtune.spaces import dsconv as _dsconv  # noqa: F401,E402
from slimtune.spaces import lowrank as _lowrank  # noqa: F401,E402
from slimtune.spaces import exits as _exits  # noqa: F401,E402
from slimtune.spaces import clustering as _clustering  # noqa: F401,E402
from slimtune.spaces._space import Space  # noqa: E402

__all__ = ["LOWERED_STAGES", "STAGES", "Knob", "KnobContext", "Param", "Space", "SpaceError", "TrainingHooks",
           "WeightEncoding", "get_knob", "knob_classes", "knob_families", "register_knob"]
