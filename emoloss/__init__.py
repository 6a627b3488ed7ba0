"""emoloss: training objectives beyond cross-entropy for JAX and Optax.

Subpackages:
  * :mod:`emoloss.losses` -- per-example losses in the style of ``optax.losses``.
  * :mod:`emoloss.transforms` -- Optax gradient transformations (flooding, ascent/descent, Tiger).
  * :mod:`emoloss.fused` -- chunked cross-entropy + EMO straight from hidden states and LM head.

Everything public in a subpackage is re-exported here.
"""

from emoloss import fused, losses, transforms
from emoloss._validation import check_label_range
from emoloss.fused import *
from emoloss.losses import *
from emoloss.transforms import *

__version__ = "0.1.0"

__all__ = (
    ["check_label_range", "fused", "losses", "transforms"]
    + list(losses.__all__)
    + list(transforms.__all__)
    + list(fused.__all__)
)
