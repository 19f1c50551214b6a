"""Running trials: training with distillation, measurement, search backends."""
