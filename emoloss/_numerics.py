"""Exact numerical helpers shared by the losses and the transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def power_of_two_scale(largest: Array) -> tuple[Array, Array]:
  """Two powers of two whose product is ``2^-e``, where ``2^e >= largest >= 0`` (``frexp``'s
  exponent): multiplying by both divides exactly (no rounding) and brings every ``|x| <= largest``
  below 1, so that sums and squares of the result cannot overflow. Two factors, each a normal
  number, since ``2^-128`` alone is subnormal in float32 and may be flushed to zero. Their
  reciprocals (also exact) undo the scaling."""
  _, exponent = jnp.frexp(largest)
  half = exponent // 2
  one = jnp.ones([], largest.dtype)
  return jnp.ldexp(one, -half), jnp.ldexp(one, half - exponent)
