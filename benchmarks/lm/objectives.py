"""The fine-tuning objectives compared, each with the recipe it comes from.

Every objective is a per-token function of the token's negative log-likelihood ``nll`` and (for
EMO) its EMO cost ``emo`` under the frozen cost embedding (a copy of the pretrained LM head):

* ``ce`` -- cross-entropy (maximum likelihood), the baseline.
* ``emo`` -- EMO + CE as the paper's language-modelling runs: DRSY/EMO
  ``language_modeling/gpt2.py``, mode ``emo``: ``½ (CE + sg(CE / EMO) · EMO)``, **uncapped**.
* ``emo_cap3`` -- the same mix with the ratio capped at 3, as the packaged ``EMOLoss`` and the
  LLaMA fine-tuning script (mode 1 of ``emoloss.emo_ce_combination``). Both EMO variants use
  :func:`emo_ce_mix`, so they differ only by the cap.
* ``tailr_open`` -- TaiLr with the open-ended generation recipe, density-ratio threshold
  ``γ = 1e-7`` and minimum weight 0.2: thu-coai/TaiLr ``examples/bart/long/train_tailr.sh``
  (WritingPrompts).
* ``tailr`` -- TaiLr with ``γ = 0.8``, minimum weight 0.2: thu-coai/TaiLr
  ``examples/bart/summarization/train_tailr.sh`` (Gigaword), the default of ports.
* ``mixce`` -- MixCE, ``(η + (1 - η) sg(p_y)) · CE`` with ``η = 0.5``: DRSY/EMO ``gpt2.py``
  mode ``mixce``, ``mixing_ratio`` default 0.5 in its ``run_lm.py``; :func:`mixce` makes the
  variants of other ``η`` (the MixCE authors choose ``η`` on validation MAUVE).

The cost ablation of the uncapped mix (:data:`COST_ABLATION`) changes only where EMO's cost
embedding comes from (``Objective.cost``): ``"base"`` the frozen pretrained head (the paper),
``"own"`` the model's current head under stop-gradient (DRSY/EMO mode ``adaptive_emo``),
``"given"`` an embedding passed by the caller (the CE-fine-tuned head, a random Gaussian), and
``"identity"`` the cost ``1 - [i = j]``, for which ``EMO = 1 - p_y``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

import emoloss


class Objective(NamedTuple):
  """One objective: a name, a label for tables, its family and hyper-parameters, its source."""
  name: str
  label: str
  family: str                      # ce | emo | tailr | mixce
  source: str
  max_ratio: float | None = None   # emo: cap of sg(CE / EMO); None = uncapped
  gamma: float = 0.0               # tailr: density-ratio threshold
  min_weight: float = 0.0          # tailr: lower clip of the weight
  eta: float = 1.0                 # mixce: mixing ratio (1 = CE)
  emo_only: bool = False           # emo: the EMO cost alone, no CE (oracle experiment)
  cost: str = "base"               # emo: base | own | given | identity (see the module doc)


OBJECTIVES = (
    Objective("ce", "CE", "ce", "maximum likelihood (the baseline)"),
    Objective("emo", "EMO+CE (uncapped)", "emo",
              "DRSY/EMO language_modeling/gpt2.py, mode emo", max_ratio=None),
    Objective("emo_cap3", "EMO+CE (cap 3)", "emo",
              "EMOLoss package / LLaMA script: ratio capped at 3 (emoloss mode 1)",
              max_ratio=3.0),
    Objective("tailr_open", "TaiLr γ=1e-7", "tailr",
              "thu-coai/TaiLr examples/bart/long/train_tailr.sh (open-ended generation)",
              gamma=1e-7, min_weight=0.2),
    Objective("tailr", "TaiLr γ=0.8", "tailr",
              "thu-coai/TaiLr examples/bart/summarization/train_tailr.sh", gamma=0.8,
              min_weight=0.2),
    Objective("mixce", "MixCE η=0.5", "mixce",
              "DRSY/EMO language_modeling/gpt2.py mode mixce; run_lm.py mixing_ratio 0.5",
              eta=0.5),
)
BY_NAME = {o.name: o for o in OBJECTIVES}
_ADAPTIVE = "DRSY/EMO language_modeling/gpt2.py, mode adaptive_emo (own head, no gradient)"
COST_ABLATION = (
    Objective("emo_own", "EMO+CE, own head (sg)", "emo", _ADAPTIVE, cost="own"),
    Objective("emo_cehead", "EMO+CE, CE-fine-tuned head", "emo",
              "ablation: cost = head of the same seed's CE-fine-tuned model", cost="given"),
    Objective("emo_random", "EMO+CE, random Gaussian cost", "emo",
              "ablation: cost = N(0, 1) embedding (fixed per seed)", cost="given"),
    Objective("emo_identity", "EMO+CE, identity cost (EMO = 1 - p_y)", "emo",
              "ablation: cost 1 - [i = j]", cost="identity"),
)
"""The uncapped EMO+CE mix with other cost embeddings (``emo`` itself is the frozen base head)."""
MIXCE_ETAS = (0.1, 0.3, 0.5, 0.7, 0.9)


def mixce(eta: float, name: str | None = None) -> Objective:
  """MixCE with mixing ratio ``eta`` (named ``mixce_{eta}`` unless ``name`` is given)."""
  return Objective(name or f"mixce_{eta:g}", f"MixCE η={eta:g}", "mixce",
                   "DRSY/EMO language_modeling/gpt2.py mode mixce; η chosen on validation MAUVE "
                   f"from {', '.join(f'{e:g}' for e in MIXCE_ETAS)}", eta=eta)


def emo_ce_mix(nll: jax.Array, emo: jax.Array, max_ratio: float | None) -> jax.Array:
  """``½ (CE + clip(sg(CE / EMO), 0, max_ratio) · EMO)`` per token (``max_ratio=None``: no
  cap): :func:`emoloss.emo_ce_combination` in mode 1 (its ratio is 0 where EMO is 0)."""
  return emoloss.emo_ce_combination(nll, emo, mode=1, max_ratio=max_ratio)


def token_loss(objective: Objective, nll: jax.Array, emo: jax.Array | None) -> jax.Array:
  """The per-token training loss of ``objective`` from per-token ``nll`` (differentiable) and,
  for the EMO family, ``emo`` (the EMO cost, differentiable)."""
  if objective.family == "ce":
    return nll
  if objective.family == "emo":
    if objective.cost == "identity":  # cost 1 - [i = j]: EMO = sum_{i != y} p_i = 1 - p_y
      emo = jnp.maximum(1.0 - jnp.exp(-nll), 0.0)
    return emo if objective.emo_only else emo_ce_mix(nll, emo, objective.max_ratio)
  if objective.family == "focal":  # (1 - p_y)^γ · CE, differentiated through the factor
    return jnp.maximum(1.0 - jnp.exp(-nll), 0.0) ** objective.gamma * nll
  if objective.family == "tailr":
    return emoloss.tailr_weight(-nll, objective.gamma, objective.min_weight) * nll
  if objective.family == "mixce":
    return emoloss.mixce_weight(-nll, objective.eta) * nll
  raise ValueError(f"unknown objective family {objective.family!r}")
