"""Pure, Ray-free reward code: parsers, metrics, task rewards, normalization, curriculum, shaping, judge rubric."""
