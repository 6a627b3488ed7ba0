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
from emoloss.fused import _deprecated as _fused_deprecated
from emoloss.losses import *
from emoloss.transforms import *

__version__ = "0.3.0"

__all__ = (
    ["check_label_range", "fused", "losses", "transforms"]
    + list(losses.__all__)
    + list(transforms.__all__)
    + list(fused.__all__)
)


def __getattr__(name: str):
  """The 0.2 fused names, thin aliases that warn (see :mod:`emoloss.fused`)."""
  return _fused_deprecated.lookup(name, __name__)
