"""The sharded losses and an optimiser step across processes: 2 processes x 2 CPU devices and
4 processes x 1 device (jax.distributed on loopback, gloo collectives) against one process with
4 devices (the same mesh and program) and against one device (the unsharded functions).

Each run computes tests/multiproc/cases.py on the same global arrays: the fused (soft-capped)
and one-pass (label-smoothed EMO + CE) token-mean losses with their gradients w.r.t. the hidden
states and the head, tokens split over the ``data`` axis and the head's vocabulary rows over the
``model`` axis of a 2 x 2 mesh, masks with 14 and 5 unmasked tokens in the two data shards, and
two micro-steps of ``optax.chain(flood, tiger(accumulation_steps=2))`` on a replicated projection
and the vocabulary-sharded head.
"""

import json
import re

import numpy as np
import pytest

from tests.multiproc import cases, helpers

pytestmark = pytest.mark.experiments

WORKER = helpers.ROOT / "tests" / "multiproc" / "loss_worker.py"
LAYOUTS = {"1x4": (1, 4), "2x2": (2, 2), "4x1": (4, 1)}  # processes x devices per process
U = 2.0 ** -24  # float32 unit roundoff
# One device against the 2 x 2 mesh: each result is a sum over at most K = 32 float32 terms
# (N = 32 tokens, V = 24 vocabulary rows) that the mesh adds in another grouping (per device,
# then psum over shards), which changes it by at most about K u times the size of the terms
# (the standard summation bound); the tests compare at K u of the largest entry of each result
# (1.9e-6 relative). Measured on the 2-core machine: at most 5 u.
TOLERANCE = 32 * U


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The results of every layout (one multi-process run each, sequential: 2 shared cores)."""
  results = {}
  for name, (processes, devices) in LAYOUTS.items():
    out = tmp_path_factory.mktemp(name)
    helpers.run(WORKER, ["--out", out], processes, devices, timeout=240)
    held = [json.loads((out / f"process{i}.json").read_text()) for i in range(processes)]
    results[name] = (dict(np.load(out / "results.npz")), held, out)
  return results


@pytest.fixture(scope="module")
def one_device():
  return cases.run_all(None)


@pytest.mark.parametrize("layout", ["2x2", "4x1"])
def test_every_value_and_gradient_equals_one_process_bit_for_bit(runs, layout):
  """Same mesh and program, the shards on other processes: every loss value, gradient and
  optimiser result is identical to one process with 4 devices (each all-reduce adds two
  partials, a + b, exact in either order, over gloo or in process)."""
  reference, *_ = runs["1x4"]
  got, *_ = runs[layout]
  assert set(got) == set(reference)
  for name in reference:
    assert np.array_equal(got[name], reference[name]), name


@pytest.mark.parametrize("layout", ["2x2", "4x1"])
def test_tokens_split_over_processes_with_different_unmasked_counts(runs, layout):
  """Each process held only its data shard's rows; the two shards' unmasked counts differ
  (14 and 5), and the loss is the global token mean (checked against one device below)."""
  _, held, _ = runs[layout]
  processes = LAYOUTS[layout][0]
  rows = {p["process"]: [tuple(r) for r in p["rows"]] for p in held}
  assert rows[0] == [(0, 16)] and rows[processes - 1] == [(16, 32)]
  assert {p["unmasked"] for p in held} == set(cases.UNMASKED)


def test_multi_process_results_match_one_device_to_float32_rounding(runs, one_device):
  """Against the unsharded functions on one device: values and gradients of both losses and
  the loss values of the optimiser steps within ``TOLERANCE`` of the largest entry; Tiger's
  momentum too, and the parameters after the Tiger update wherever the momentum's sign is
  decided (|m| above the momentum's tolerance), the rest being sign(m)-steps of 0.05."""
  got, *_ = runs["2x2"]
  for name, expected in one_device.items():
    if name in ("step/proj", "step/head"):
      continue
    scale = np.max(np.abs(expected))
    error = np.max(np.abs(got[name].astype(np.float64) - expected))
    assert error <= TOLERANCE * scale, (name, error / U, scale)
  for name in ("proj", "head"):
    momentum = one_device[f"step/momentum_{name}"]
    decided = np.abs(momentum) > TOLERANCE * np.max(np.abs(momentum))
    assert decided.mean() > 0.95
    expected = one_device[f"step/{name}"]
    error = np.abs(got[f"step/{name}"].astype(np.float64) - expected)[decided]
    assert np.max(error) <= TOLERANCE * np.max(np.abs(expected)), name
  # The step really moved the parameters (flood ascended, Tiger updated after 2 micro-steps).
  assert not np.allclose(one_device["step/head"], cases.problem()["head"])


ALL_REDUCE = re.compile(
    r"=\s*(\(.*?\)|\S+)\s+all-reduce(?:-start)?\(.*?replica_groups=(\{[\d,{}]*\}|[^,\s]+)")
MODEL_GROUPS, DATA_GROUPS = "{{0,1},{2,3}}", "{{0,2},{1,3}}"  # the 2 x 2 mesh's axes


def all_reduces(hlo: str):
  """``(group, [operand shapes])`` of every all-reduce of a compiled program."""
  found = []
  for shapes, groups in ALL_REDUCE.findall(hlo):
    dims = [tuple(int(d) for d in s.split(",") if d) for s in re.findall(r"\w+\[([\d,]*)\]",
                                                                          shapes)]
    found.append((groups, dims))
  return found


@pytest.mark.parametrize("loss, per_token", [
    ("fused", 4 + cases.K + cases.D),  # max, sum_exp, target logit, EMO sum, target cost row, ∂h
    ("onepass", 5 + cases.K + cases.D),  # the same and Σ_v z_v (label smoothing)
])
def test_communication_per_token_is_the_documented_one(runs, loss, per_token):
  """docs/scaling.md's table, read from the programs compiled by process 0 of the 2-process run:
  only all-reduces (no gather); over the model axis, float32 vectors with one row per token
  (``per_token`` values in all); over the data axis, blocks of ``∂W`` rows (``V / M`` rows of
  ``d`` in all) and scalars; across the whole mesh, scalars (the token count, the loss)."""
  hlo = (runs["2x2"][2] / f"{loss}.hlo.txt").read_text()
  assert not re.search(r"all-gather|all-to-all|reduce-scatter|collective-permute", hlo)
  reduces = all_reduces(hlo)
  model = [dims for groups, operands in reduces if groups == MODEL_GROUPS for dims in operands]
  assert sum(int(np.prod(d[1:])) for d in model) == per_token, model
  data = [dims for groups, operands in reduces if groups == DATA_GROUPS for dims in operands]
  assert all(d == () or d[-1] == cases.D for d in data), data
  assert sum(d[0] for d in data if d) <= cases.V // 2, data
  others = [dims for groups, operands in reduces if groups not in (MODEL_GROUPS, DATA_GROUPS)
            for dims in operands]
  assert all(d == () for d in others), others
