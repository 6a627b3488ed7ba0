"""Optax gradient transformations: flooding, ascent/descent alternation, gradient normalisation,
Tiger.

* :func:`flood` -- negates the raw gradient when the batch loss (``value=``) is below a flood
  level; :func:`flooded`, :func:`iflooded`, :func:`iflood_loss` -- the same idea on the loss.
* :func:`alternate_ascent_descent`, :func:`scale_by_ascent_descent`, :func:`backstitch` --
  alternating descent and smaller ascent steps; :func:`gradient_norm_penalty`,
  :func:`alternation_penalty` and :func:`alternation_equivalent_loss` (also for equal step
  sizes) -- their explicit second-order form.
* :func:`normalize_by_running_gradient_norm` -- divides the gradient by a running mean of its
  global norm (the EXACT authors' gradient normaliser).
* :func:`tiger` -- sign-momentum optimiser (Lion with ``β1 = β2``) with decoupled weight decay,
  a chain of :func:`scale_by_tiger` (the momentum with Tiger's accumulation rule) and Optax's
  weight decay and learning-rate scaling;
  :func:`grouped_tiger` -- with the reference's parameter groups (:func:`tiger_parameter_labels`)
  and non-finite-gradient shrink.
"""

from emoloss.transforms._alternation import (
    AscentDescentState,
    alternate_ascent_descent,
    alternation_equivalent_loss,
    alternation_penalty,
    backstitch,
    gradient_norm_penalty,
    scale_by_ascent_descent,
)
from emoloss.transforms._flooding import FloodState, flood, flooded, iflood_loss, iflooded
from emoloss.transforms._gradient_norm import (
    RunningGradientNormState,
    normalize_by_running_gradient_norm,
)
from emoloss.transforms._tiger import (
    ScaleByTigerState,
    TigerState,
    grouped_tiger,
    scale_by_tiger,
    tiger,
    tiger_parameter_labels,
)

__all__ = [
    "AscentDescentState",
    "FloodState",
    "RunningGradientNormState",
    "ScaleByTigerState",
    "TigerState",
    "alternate_ascent_descent",
    "alternation_equivalent_loss",
    "alternation_penalty",
    "backstitch",
    "flood",
    "flooded",
    "gradient_norm_penalty",
    "grouped_tiger",
    "iflood_loss",
    "iflooded",
    "normalize_by_running_gradient_norm",
    "scale_by_ascent_descent",
    "scale_by_tiger",
    "tiger",
    "tiger_parameter_labels",
]
