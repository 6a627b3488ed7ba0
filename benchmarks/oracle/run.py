"""Known-oracle experiment end to end: oracle, its samples, students, exact metrics, statistics.

Phases (each cached under ``--out``, so an interrupted run resumes):

1. data (``benchmarks.lm.data``): the Python standard library source and a byte-level BPE;
2. oracle ``P``: a small :class:`~benchmarks.lm.model.TransformerLM` trained with CE on that code
   by :func:`benchmarks.lm.train.train_run` (``oracle.npz``, best by validation NLL);
3. oracle samples (unbiased, KV-cached :func:`benchmarks.lm.model.sample`, each from the
   document separator): a training set, a validation set (checkpoint choice) and a held-out
   test set, from independent keys (``samples.npz``);
4. per regime (``same``: the oracle's architecture; ``small``: a narrower, shallower student),
   seed and objective: a student from the seed's initialisation trained on the seed's batches
   (:func:`benchmarks.oracle.training.decayed_training`; identical for every objective) for a
   fixed number of steps with a cosine learning-rate decay, **the checkpoint with the lowest
   validation NLL kept** (:func:`train_student`), then its exact metrics
   (:mod:`benchmarks.oracle.exact`) along held-out oracle samples and along its own unbiased
   samples (``student_{regime}_s{seed}_{objective}.json``). CE runs first in each seed: its
   selected head is the **realistic** EMO cost embedding of that seed (``emo``, ``emo_cap3``,
   ``emo_only``); ``emo_oracle`` / ``emo_cap3_oracle`` use the oracle's own head (privileged);
   At the main vocabulary size, the continued-training check: per regime and seed, CE
   trained for twice its selected steps (``..._ce_continued.json``);
5. the fine-tuning regime (:mod:`benchmarks.oracle.finetune`, ``v{V}/finetune/``): a target
   oracle shifted from the oracle, students of several sizes pretrained on the oracle's samples
   and fine-tuned from that checkpoint on a limited set of the target's samples with each
   objective, CE's temperature curve (:mod:`benchmarks.oracle.temperature`) and its
   continued-training check;
6. phases 1-4 again for each vocabulary size of the sweep (``v{V}/`` sub-folders) and for the
   further, independently trained oracles of every size (``v{V}/oracle{r}/``), with CE and the
   two EMO+CE mixes in the ``same`` regime;
7. paired comparisons to CE, the temperature control, the convergence checks and the trend
   against ``log2 V`` with the oracle as the unit (``benchmarks.lm.stats``), JSON, Markdown and
   PNG (:mod:`benchmarks.oracle.report`).

``--worker`` runs phase 5, then phase 6 in reverse order, into the same cache from a second
process beside the main one (which takes phase 6 in order: the two meet in the middle).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks import outputs
from benchmarks.lm.config import Config as LMConfig
from benchmarks.lm.config import UsageError
from benchmarks.lm.data import MIN_VOCAB_SIZE, cached_json
from benchmarks.lm.model import ModelConfig
from benchmarks.lm.objectives import OBJECTIVES, Objective
from benchmarks.lm.report import write_results
from benchmarks.oracle.training import cosine_decay, decayed_training

REPO_ROOT = outputs.REPO_ROOT
RESULTS = outputs.RESULTS

# The objectives of the package that apply to LMs: the main experiment's six (the EMO mixes with
# the realistic cost: the head of the seed's CE-trained student), the two mixes with the oracle's
# own head (privileged), EMO alone and focal.
_CE_HEAD = " cost: head of the seed's CE-trained student (realistic)"
ORACLE_OBJECTIVES = (
    *(o._replace(source=o.source + ";" + _CE_HEAD, cost="given") if o.family == "emo" else o
      for o in OBJECTIVES),
    Objective("emo_oracle", "EMO+CE (uncapped), oracle head", "emo",
              "DRSY/EMO gpt2.py mode emo; cost: the oracle's own head (privileged)", cost="base"),
    Objective("emo_cap3_oracle", "EMO+CE (cap 3), oracle head", "emo",
              "emoloss mode 1, cap 3; cost: the oracle's own head (privileged)", max_ratio=3.0,
              cost="base"),
    Objective("emo_only", "EMO alone", "emo",
              "EMO cost only (Ren et al. §3; DRSY/EMO mode 2 without CE is not published);"
              + _CE_HEAD, emo_only=True, cost="given"),
    Objective("focal", "focal γ=2", "focal", "Lin et al. 2017, γ = 2 (control)", gamma=2.0),
)
BY_NAME = {o.name: o for o in ORACLE_OBJECTIVES}
FEW_SEED_OBJECTIVES = ("emo_only", "focal")   # run at ``few_seeds`` seeds (controls; wide intervals)
STUDENT_PHASE = 7   # the from-scratch students' batch-order stream


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting that changes the result."""
  pretrain_chars: int = 400_000     # stdlib text the oracle is trained on
  vocab_size: int = 512
  seq_len: int = 32                 # sample length (separator + seq_len - 1 sampled tokens)
  oracle_d_model: int = 32
  oracle_layers: int = 2
  oracle_heads: int = 2
  oracle_steps: int = 600
  oracle_lr: float = 3e-3
  small_d_model: int = 16           # the capacity-mismatch student
  small_layers: int = 1
  small_heads: int = 2
  train_samples: int = 16384        # oracle samples the students learn from
  val_samples: int = 512            # oracle samples for checkpoint choice (not the test set)
  held_out_samples: int = 1024      # oracle samples for PPL_test / forward KL
  student_samples: int = 512        # student samples for PPL_oracle / reverse KL
  student_steps: int = 5000         # `same`: warm-up, cosine decay to 10 % over these steps
  small_student_steps: int = 8000   # `small` (the narrower student learns more slowly)
  eval_every: int = 100             # validation NLL every k steps (best checkpoint kept)
  student_lr: float = 3e-3          # peak
  batch_size: int = 32
  weight_decay: float = 0.01
  warmup_steps: int = 30
  seeds: int = 5
  few_seeds: int = 2                # the `small` regime, EMO alone and focal
  sweep_seeds: int = 3              # per oracle of the sweep beyond the main one (5 there)
  first_seed: int = 0               # seeds first_seed .. first_seed + seeds - 1
  # `small` (a narrower student from scratch) is not in the default: it does not converge within
  # a budget that fits (twice 8000 steps still gains 0.013 nats); the fine-tuning sizes are the
  # misspecified students
  regimes: tuple[str, ...] = ("same", "finetune")  # finetune: the sizes below
  objectives: tuple[str, ...] = tuple(o.name for o in ORACLE_OBJECTIVES)
  small_objectives: tuple[str, ...] = ("ce", "emo", "emo_cap3")
  sweep_vocab_sizes: tuple[int, ...] = (300, 1200)   # besides vocab_size; () = no sweep
  sweep_objectives: tuple[str, ...] = ("ce", "emo", "emo_cap3")
  vocab_oracles: int = 2            # independently trained oracles per vocabulary size
  continued_check: bool = True      # CE continued for twice its selected steps (main V)
  # The fine-tuning regime (benchmarks.oracle.finetune): P = P0 trained further on the manual.
  # (name, d_model, layers, heads, epochs): passes over the limited P set, best checkpoint kept
  finetune_sizes: tuple[tuple[str, int, int, int, int], ...] = (("ft_d16", 16, 1, 2, 16),
                                                                ("ft_d32", 32, 1, 2, 4))
  finetune_seeds: int = 5           # 0 = no fine-tuning regime
  shift_steps: int = 150            # CE steps from P0 to P on the reference manual
  shift_lr: float = 1e-3
  target_train_samples: int = 2048  # the limited set of P samples the students fine-tune on
  target_val_samples: int = 512     # P samples for the checkpoint choice
  pretrain_steps: int = 8000        # students' CE pretraining on P0 samples (cosine decay)
  pretrain_eval_every: int = 400
  finetune_lr: float = 3e-3         # peak; linear decay to 0, no warm-up (DRSY/EMO run_lm.py)
  finetune_eval_every: int = 64     # one epoch of the limited set
  finetune_objectives: tuple[str, ...] = ("ce", "emo", "emo_cap3", "tailr_open", "mixce")
  temperatures: tuple[float, ...] = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2)

  def vocab_sizes(self) -> tuple[int, ...]:
    """Every vocabulary size of the sweep (the main one included), ascending."""
    return tuple(sorted({self.vocab_size, *self.sweep_vocab_sizes}))

  def oracle_config(self, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size, self.seq_len, self.oracle_d_model, self.oracle_layers,
                       self.oracle_heads)

  def student_config(self, regime: str, vocab_size: int) -> ModelConfig:
    if regime == "same":
      return self.oracle_config(vocab_size)
    return ModelConfig(vocab_size, self.seq_len, self.small_d_model, self.small_layers,
                       self.small_heads)

  def fine_tunes(self) -> bool:
    """Whether the fine-tuning regime runs."""
    return bool(self.finetune_seeds) and "finetune" in self.regimes

  def student_steps_of(self, regime: str) -> int:
    """Training steps of a from-scratch student of ``regime``."""
    return self.student_steps if regime == "same" else self.small_student_steps

  def lm_config(self, vocab_size: int) -> LMConfig:
    """The main experiment's settings that its data module reads (tokenizer, corpora)."""
    return LMConfig(pretrain_chars=self.pretrain_chars, pretrain_val_chars=20_000,
                    vocab_size=vocab_size, seq_len=self.seq_len)

  def plan(self, vocab_size: int, replicate: int = 0) -> dict[str, list[tuple[str, int]]]:
    """``{regime: [(objective, seeds)]}`` run at ``vocab_size`` with the oracle ``replicate``
    (CE first)."""
    if vocab_size != self.vocab_size or replicate:
      seeds = min(self.sweep_seeds, self.seeds)
      return {"same": [(n, seeds) for n in self.objectives if n in self.sweep_objectives]}
    plan = {}
    for regime in self.regimes:
      if regime == "finetune":  # benchmarks.oracle.finetune
        continue
      if regime == "same":
        plan[regime] = [(n, self.few_seeds if n in FEW_SEED_OBJECTIVES else self.seeds)
                        for n in self.objectives]
      else:
        plan[regime] = [(n, self.few_seeds) for n in self.objectives
                        if n in self.small_objectives]
    return plan


QUICK = {
    "pretrain_chars": 120_000, "vocab_size": 320, "seq_len": 16, "oracle_d_model": 32,
    "oracle_layers": 1, "oracle_heads": 2, "oracle_steps": 120, "small_d_model": 16,
    "small_heads": 2, "train_samples": 128, "val_samples": 128, "held_out_samples": 256,
    "student_samples": 256, "student_steps": 80, "small_student_steps": 80, "eval_every": 10,
    "batch_size": 16, "warmup_steps": 10, "seeds": 2, "few_seeds": 1, "sweep_seeds": 2,
    "objectives": ("ce", "emo", "emo_oracle", "tailr_open"), "regimes": ("same", "finetune"),
    "sweep_vocab_sizes": (300,), "sweep_objectives": ("ce", "emo"), "vocab_oracles": 1,
    # one fine-tuning size, the quick oracle's architecture (a plumbing check that shares the
    # compiled programs of the `same` students; the default's students are smaller than P)
    "finetune_sizes": (("ft_d32", 32, 1, 2, 2),), "finetune_seeds": 2,
    "shift_steps": 30, "target_train_samples": 64, "target_val_samples": 128,
    "pretrain_steps": 40, "pretrain_eval_every": 20,
    "finetune_eval_every": 2, "finetune_objectives": ("ce", "emo", "tailr_open"),
    "temperatures": (0.7, 1.0, 1.4),
}
# Settings of the added phases: not part of the from-scratch students' cache key, so a cache made
# before they existed stays valid (the fine-tuning phase keys its own folder on them).
FINETUNE_FIELDS = ("finetune_sizes", "finetune_seeds", "shift_steps", "shift_lr",
                   "target_train_samples", "target_val_samples", "pretrain_steps",
                   "pretrain_eval_every", "finetune_lr", "finetune_eval_every",
                   "finetune_objectives", "temperatures")
UNKEYED_FIELDS = ("seeds", "few_seeds", "sweep_seeds", "first_seed", "regimes", "objectives",
                  "small_objectives", "sweep_vocab_sizes", "sweep_objectives", "vocab_oracles", "continued_check",
                  *FINETUNE_FIELDS)


def train_oracle(config: Config, data, out_dir: str, progress: bool, log, replicate: int = 0):
  """The oracle: CE on the stdlib code stream, best checkpoint by validation NLL;
  ``replicate`` > 0: another, independently trained one (its own initialisation and batches)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.lm import train  # pylint: disable=import-outside-toplevel
  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel

  model_config = config.oracle_config(data.vocab_size)
  init = build_model(model_config, 12345 + replicate)
  val = data_lib.covering_windows(data.streams["pretrain_val"], config.seq_len, 64)
  run = train.Run("oracle", 0, data.streams["pretrain_train"], config.oracle_steps,
                  config.oracle_lr, seed=12345 + replicate, phase=0)
  best, record = train.train_run(
      run, model_config=model_config, init_state=nnx.state(init),
      # index 0 (CE) of the students' objectives: the oracle shares their compiled step
      objectives=tuple(BY_NAME[n] for n in config.objectives),
      cost=jnp.zeros((data.vocab_size, config.oracle_d_model)), val_sets={"pretrain_val": val},
      batch_size=config.batch_size, eval_batch_size=64, eval_every=max(config.oracle_steps // 8, 1),
      warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
      path=train.LossPath(), out_dir=out_dir, progress=progress, log=log)
  nnx.update(init, best)
  return init, record


def sample_rows(model, count: int, seq_len: int, separator: int, key,
                temperature: float = 1.0) -> np.ndarray:
  """``[count, seq_len]`` samples (unbiased at ``temperature`` 1), each the separator then
  ``seq_len - 1`` tokens."""
  from benchmarks.lm.model import sample  # pylint: disable=import-outside-toplevel
  prefix = np.full((count, 1), separator, np.int32)
  return np.asarray(sample(model, prefix, key, seq_len - 1, temperature=temperature))


def oracle_samples(config: Config, oracle, separator: int, out_dir: str) -> dict:
  """Training, held-out (test), student-reference and validation oracle samples (cached), from
  independent keys."""
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  path = os.path.join(out_dir, "samples.npz")
  if os.path.exists(path):
    return outputs.load_cached(path, _load_arrays)
  sets = {name: sample_rows(oracle, count, config.seq_len, separator, jax.random.key(i))
          for i, (name, count) in enumerate((("train", config.train_samples),
                                             ("held_out", config.held_out_samples),
                                             ("self", config.student_samples),
                                             ("val", config.val_samples)))}
  data_lib.atomic_savez(path, **sets)
  return sets


def _load_arrays(path: str) -> dict:
  with np.load(path) as stored:
    return {k: stored[k] for k in stored.files}


def train_student(config: Config, model_config: ModelConfig, objectives, index: int, seed: int,
                  rows: np.ndarray, val_rows: np.ndarray, cost, *, steps: int,
                  keep: str = "best"):
  """A student from initialisation ``seed`` trained with ``objectives[index]`` for ``steps``
  steps on batches of ``rows`` drawn by ``(seed, step)`` (the same for every objective): AdamW,
  ``warmup_steps`` of linear warm-up, then cosine decay to 10 % of ``student_lr`` at ``steps``
  (:func:`benchmarks.oracle.training.decayed_training`), the validation NLL over ``val_rows``
  every ``eval_every`` steps. Returns ``(model, record)``: the model at the lowest validation NLL
  (``keep="best"``) or at the last step (``keep="last"``: the continued-training check)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel

  model = build_model(model_config, seed)
  graphdef, _ = nnx.split(model)
  state, record = decayed_training(
      model, objectives, index, seed, STUDENT_PHASE, rows, val_rows, cost, steps=steps,
      schedule=cosine_decay(config.student_lr, steps, config.warmup_steps),
      batch_size=config.batch_size, eval_every=config.eval_every,
      weight_decay=config.weight_decay, keep=keep)
  # the trained model's buffers were donated: a new one from the kept (host) state
  return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state)), record


def exact_metrics(oracle, student, held_out: np.ndarray, own_samples: np.ndarray,
                  unit_head, temperature: float = 1.0) -> dict:
  """Recall metrics along held-out oracle samples, precision metrics along ``own_samples``
  (``temperature``: of the student, see :func:`benchmarks.oracle.exact.position_divergences`)."""
  import math  # pylint: disable=import-outside-toplevel

  from benchmarks.oracle import exact  # pylint: disable=import-outside-toplevel
  on_oracle = exact.along(oracle, student, held_out, unit_head, temperature=temperature)
  on_student = exact.along(oracle, student, own_samples, unit_head, temperature=temperature)
  return {
      "ppl_test": math.exp(on_oracle["nll_q"]), "log_ppl_test": on_oracle["nll_q"],
      "log_ppl_test_se": on_oracle["nll_q_se"],
      "ppl_oracle": math.exp(on_student["nll_p"]), "log_ppl_oracle": on_student["nll_p"],
      "log_ppl_oracle_se": on_student["nll_p_se"],
      "forward_kl": on_oracle["forward_kl"], "reverse_kl": on_student["reverse_kl"],
      **{f"{name}_oracle_prefixes": on_oracle[name] for name in ("tv", "emo_cost", "emo_gap")},
      **{f"{name}_student_prefixes": on_student[name] for name in ("tv", "emo_cost", "emo_gap")},
      "entropy_q_student_prefixes": on_student["entropy_q"],
      "entropy_p_student_prefixes": on_student["entropy_p"],
      # sharpening diagnostic: H(Q) - H(P) along Q's own prefixes (negative: Q is sharper)
      "entropy_gap": on_student["entropy_q"] - on_student["entropy_p"],
      "forward_kl_on_student": on_student["forward_kl"],
      "reverse_kl_on_oracle": on_oracle["reverse_kl"],
  }


def run_students(config: Config, oracle, samples: dict, vocab_size: int, separator: int,
                 out_dir: str, progress: bool, log, replicate: int = 0,
                 reverse: bool = False) -> dict:
  """``{regime: [{name: metrics} per seed]}`` for :meth:`Config.plan` at ``vocab_size``, with
  ``untrained`` (the seed's initialisation); seeds beyond an objective's seed count lack it.
  ``reverse``: the seeds are trained last first (the list is in seed order either way)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle import exact  # pylint: disable=import-outside-toplevel

  objectives = tuple(BY_NAME[n] for n in config.objectives)
  oracle_head = jnp.array(oracle.head, copy=True)  # privileged cost: the oracle's frozen head
  unit_head = exact.unit_rows(oracle_head)
  plan = config.plan(vocab_size, replicate)
  total = sum(max(n for _, n in runs) + sum(n for _, n in runs) for runs in plan.values())
  bar = tqdm(total=total, desc=f"students V={vocab_size}", disable=not progress,
             dynamic_ncols=True)
  results = {}
  for regime, runs in plan.items():
    model_config = config.student_config(regime, vocab_size)
    steps = config.student_steps_of(regime)
    results[regime] = []
    offsets = range(max(seeds for _, seeds in runs))
    for offset in reversed(offsets) if reverse else offsets:
      seed = config.first_seed + offset
      per_seed = {}
      sample_key = jax.random.key(1000 + seed)  # the same key for every student of a seed
      stem = os.path.join(out_dir, f"student_{regime}_s{seed}")

      def untrained(seed=seed, sample_key=sample_key, model_config=model_config):
        model = build_model(model_config, seed)
        own = sample_rows(model, config.student_samples, config.seq_len, separator, sample_key)
        return dict(exact_metrics(oracle, model, samples["held_out"], own, unit_head),
                    finite=True)

      per_seed["untrained"] = cached_json(f"{stem}_untrained.json", untrained)
      bar.update()
      for name, seeds in runs:
        if offset >= seeds:
          continue
        index = config.objectives.index(name)
        bar.set_postfix_str(f"{regime} s{seed} {name}", refresh=True)
        head_path = f"{stem}_ce_head.npy"

        def trained(seed=seed, index=index, sample_key=sample_key, model_config=model_config,
                    head_path=head_path, name=name, steps=steps):
          started = time.perf_counter()
          if objectives[index].family == "emo" and objectives[index].cost == "given":
            # realistic: the seed's CE student's head
            cost = jnp.asarray(outputs.load_cached(head_path, np.load))
          else:
            cost = oracle_head
          model, record = train_student(config, model_config, objectives, index, seed,
                                        samples["train"], samples["val"], cost,
                                        steps=steps)
          if name == "ce":
            with outputs.atomic_path(head_path) as tmp:
              np.save(tmp, np.asarray(model.head))
          if record["finite"]:
            own = sample_rows(model, config.student_samples, config.seq_len, separator,
                              sample_key)
            record = {**exact_metrics(oracle, model, samples["held_out"], own, unit_head),
                      **record}
          return {**record, "seconds": time.perf_counter() - started}

        per_seed[name] = cached_json(f"{stem}_{name}.json", trained)
        if not per_seed[name]["finite"]:
          log(f"V={vocab_size} {regime} seed {seed} {name}: non-finite training (reported as "
              "unstable)")
        bar.update()
      results[regime].append(per_seed)
    if reverse:
      results[regime].reverse()
  bar.close()
  return results


def oracle_world(config: Config, vocab_size: int, out_dir: str, progress: bool, log,
                 started: float, replicate: int = 0) -> dict:
  """Data, oracle, its samples and its metrics against itself at one vocabulary size (cached in
  ``out_dir``; the oracle ``replicate`` > 0 in ``out_dir/oracle{replicate}``, on the same
  data)."""
  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle import exact  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  data = data_lib.prepare_data(config.lm_config(vocab_size), out_dir, log)
  if replicate:
    out_dir = os.path.join(out_dir, f"oracle{replicate}")
    os.makedirs(out_dir, exist_ok=True)
  separator = data.tokenizer.token_to_id(data_lib.SPECIAL_TOKEN)
  oracle, record = train_oracle(config, data, out_dir, progress, log, replicate)
  samples = oracle_samples(config, oracle, separator, out_dir)
  log(f"V={vocab_size} oracle {replicate}: oracle and samples ready "
      f"({time.perf_counter() - started:.0f} s)")
  unit_head = exact.unit_rows(oracle.head)
  reference = cached_json(os.path.join(out_dir, "oracle_self.json"), lambda: exact_metrics(
      oracle, oracle, samples["held_out"], samples["self"], unit_head))
  return {"data": data, "oracle": oracle, "record": record, "samples": samples,
          "separator": separator, "reference": reference, "out_dir": out_dir}


def run_vocabulary(config: Config, vocab_size: int, out_dir: str, progress: bool, log,
                   started: float, replicate: int = 0, reverse: bool = False) -> dict:
  """:func:`oracle_world` and its students at one vocabulary size (``reverse``: seeds in
  reverse order, for a second process filling the same cache)."""
  world = oracle_world(config, vocab_size, out_dir, progress, log, started, replicate)
  data, oracle, samples = world["data"], world["oracle"], world["samples"]
  per_regime = run_students(config, oracle, samples, data.vocab_size, world["separator"],
                            world["out_dir"], progress, log, replicate, reverse)
  continued = {}
  if config.continued_check and vocab_size == config.vocab_size and not replicate:
    continued = continued_students(config, oracle, samples, data.vocab_size, world["separator"],
                                   world["out_dir"], per_regime)
  log(f"V={vocab_size} oracle {replicate}: students done ({time.perf_counter() - started:.0f} s)")
  return {
      "data": data.description,
      "oracle": {"training": {k: world["record"][k] for k in ("best_step", "best_nll",
                                                               "seconds")},
                 "self": world["reference"],
                 "sampled_tokens": {k: int(v.shape[0] * (v.shape[1] - 1))
                                    for k, v in samples.items()}},
      "per_regime": per_regime,
      "continued": continued,
      "_objects": world,
  }


def continued_students(config: Config, oracle, samples: dict, vocab_size: int, separator: int,
                       out_dir: str, per_regime: dict) -> dict:
  """The continued-training check of each regime: per seed, CE trained for twice its selected
  steps (the same recipe and batches, the schedule decaying over the longer run), evaluated at its
  last step (``student_{regime}_s{seed}_ce_continued.json``)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from benchmarks.oracle import exact  # pylint: disable=import-outside-toplevel

  objectives = tuple(BY_NAME[n] for n in config.objectives)
  oracle_head = jnp.array(oracle.head, copy=True)
  unit_head = exact.unit_rows(oracle_head)
  out = {}
  for regime, per_seed in per_regime.items():
    model_config = config.student_config(regime, vocab_size)
    out[regime] = []
    for offset, models in enumerate(per_seed):
      seed = config.first_seed + offset
      selected = models.get("ce", {}).get("steps", 0)
      if not selected or "forward_kl" not in models["ce"]:
        out[regime].append({})
        continue

      def continued(seed=seed, selected=selected, model_config=model_config):
        started = time.perf_counter()
        # the cost CE's own run was given (unused by CE): the same compiled step
        model, record = train_student(config, model_config, objectives, 0, seed, samples["train"],
                                      samples["val"], oracle_head, steps=2 * selected,
                                      keep="last")
        own = sample_rows(model, config.student_samples, config.seq_len, separator,
                          jax.random.key(1000 + seed))
        return {**exact_metrics(oracle, model, samples["held_out"], own, unit_head), **record,
                "seconds": time.perf_counter() - started}

      out[regime].append(cached_json(
          os.path.join(out_dir, f"student_{regime}_s{seed}_ce_continued.json"), continued))
  return out


def finetune_dir(out_dir: str, config: Config, overwrite: bool) -> str:
  """The fine-tuning regime's cache folder, keyed on every setting that changes its result."""
  folder = os.path.join(out_dir, f"v{config.vocab_size}", "finetune")
  os.makedirs(folder, exist_ok=True)
  wanted = json.loads(json.dumps(dataclasses.asdict(config)))
  keyed = {k: v for k, v in wanted.items()
           if k not in UNKEYED_FIELDS or k in FINETUNE_FIELDS and k not in (
               "finetune_seeds", "finetune_objectives", "temperatures")}
  path = os.path.join(folder, "config.json")
  if os.path.exists(path):
    stored = {k: v for k, v in outputs.read_json(path).items() if k in keyed}
    if stored != keyed:
      if not overwrite:
        changed = sorted(k for k in keyed if stored.get(k) != keyed[k])
        raise UsageError(f"{folder} holds fine-tuning runs of other settings "
                         f"({', '.join(changed)}); use another --out or --overwrite.")
      shutil.rmtree(folder)
      os.makedirs(folder)
  outputs.write_json(path, keyed)
  return folder


def prepare_out_dir(out_dir: str, config: Config, overwrite: bool) -> None:
  """Creates ``out_dir``; refuses (or, with ``overwrite``, clears) caches of other settings.
  Changing only the seeds, regimes or objectives reuses every finished run."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as error:
    raise UsageError(f"--out {out_dir!r}: cannot create the folder ({error}).") from None
  path = os.path.join(out_dir, "config.json")
  wanted = json.loads(json.dumps(dataclasses.asdict(config)))
  keyed = {k: v for k, v in wanted.items() if k not in UNKEYED_FIELDS}
  if os.path.exists(path):
    stored = {k: v for k, v in outputs.read_json(path).items() if k in keyed}
    if stored != keyed:
      if not overwrite:
        changed = sorted(k for k in keyed if stored.get(k) != keyed[k])
        raise UsageError(f"{out_dir} holds runs of other settings ({', '.join(changed)}); use "
                         f"another --out or --overwrite to discard them.")
      for name in os.listdir(out_dir):
        if name.endswith((".npz", ".json", ".npy")):
          os.remove(os.path.join(out_dir, name))
        elif name.startswith("v") and os.path.isdir(os.path.join(out_dir, name)):
          shutil.rmtree(os.path.join(out_dir, name))
  outputs.write_json(path, wanted)


def finetune_phase(config: Config, world: dict, out_dir: str, overwrite: bool, progress: bool,
                   log) -> dict:
  """The fine-tuning regime (:func:`benchmarks.oracle.finetune.run_finetune`) on the main
  vocabulary's :func:`oracle_world`, cached in :func:`finetune_dir`."""
  from benchmarks.oracle import finetune  # pylint: disable=import-outside-toplevel
  return finetune.run_finetune(config, world["data"], world["oracle"], world["samples"],
                               world["separator"], finetune_dir(out_dir, config, overwrite),
                               progress, log)


def run_experiment(config: Config, out_dir: str, json_path: str, *, overwrite: bool = False,
                   progress: bool = True, log=print, command: str = "",
                   worker: bool = False) -> dict:
  """The whole experiment; returns the results and writes them (JSON, ``.md``, ``.png``).
  ``worker``: a second process filling the same ``out_dir`` cache beside the main one (the
  fine-tuning regime, then the sweep's other vocabulary sizes and oracles in reverse order, so
  that the two processes meet in the middle); returns ``{}`` and writes nothing else."""
  started, load_at_start = time.perf_counter(), os.getloadavg()[0]
  prepare_out_dir(out_dir, config, overwrite)
  others = [(v, r) for r in range(config.vocab_oracles) for v in config.vocab_sizes()
            if r or v != config.vocab_size]
  if worker:
    if config.fine_tunes():
      finetune_phase(config, oracle_world(config, config.vocab_size,
                                          os.path.join(out_dir, f"v{config.vocab_size}"),
                                          progress, log, started),
                     out_dir, overwrite, progress, log)
    for vocab_size, replicate in reversed(others):
      run_vocabulary(config, vocab_size, os.path.join(out_dir, f"v{vocab_size}"), progress,
                     log, started, replicate, reverse=True)
    return {}
  from benchmarks.machine import machine_description  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle import report  # pylint: disable=import-outside-toplevel

  by_vocab = {config.vocab_size: run_vocabulary(
      config, config.vocab_size, os.path.join(out_dir, f"v{config.vocab_size}"), progress, log,
      started)}
  main = by_vocab[config.vocab_size]
  objects = main.pop("_objects")
  tuned = {"per_regime": {}, "temperature": {}, "continued": {}, "finetune": {}}
  if config.fine_tunes():
    tuned = finetune_phase(config, objects, out_dir, overwrite, progress, log)
  replicates: dict = {}
  for vocab_size, replicate in others:
    result = run_vocabulary(config, vocab_size, os.path.join(out_dir, f"v{vocab_size}"),
                            progress, log, started, replicate)
    result.pop("_objects")
    if replicate:
      replicates.setdefault(vocab_size, []).append(
          {k: result[k] for k in ("oracle", "per_regime")})
    else:
      by_vocab[vocab_size] = result
  results = {
      "command": command,
      "config": json.loads(json.dumps(dataclasses.asdict(config))),
      "objectives": {o.name: {"label": o.label, "source": o.source}
                     for o in ORACLE_OBJECTIVES
                     if o.name in config.objectives
                     or tuned["finetune"] and o.name in config.finetune_objectives},
      "data": main["data"],
      "oracle": main["oracle"],
      "machine": machine_description(("tokenizers",)),
      "machine_note": (f"1-minute load average {load_at_start:.1f} at the start, "
                       f"{os.getloadavg()[0]:.1f} at the end"),
      "per_regime": {**main["per_regime"], **tuned["per_regime"]},
      "vocab_sweep": {str(v): {"data_vocab_size": r["data"]["vocab_size"],
                               "oracle": r["oracle"], "per_regime": r["per_regime"],
                               "replicates": replicates.get(v, [])}
                      for v, r in sorted(by_vocab.items())},
      "continued": {**main["continued"], **tuned["continued"]},
  }
  if tuned["finetune"]:
    results["finetune"] = dict(tuned["finetune"], target=tuned["target"])
    results["temperature_curves"] = tuned["temperature"]
  objective_names = list(dict.fromkeys([*config.objectives, *config.finetune_objectives]))
  results["comparisons"] = report.compare(results["per_regime"], objective_names)
  results["claims"] = report.claims(results["comparisons"])
  results["convergence"] = report.convergence(results)
  if tuned["finetune"]:
    results["temperature_control"] = report.temperature_control(results)
  swept = [n for n in config.objectives if n in config.sweep_objectives]
  results["vocab_comparisons"] = {
      v: report.compare({"same": results["vocab_sweep"][v]["per_regime"]["same"]}, swept)["same"]
      for v in report.swept_sizes(results["vocab_sweep"])}
  results["vocab_trend"] = report.vocab_trend(results["vocab_sweep"], swept[1:])
  results["wall_seconds"] = time.perf_counter() - started
  write_results(json_path, results, report.plot, report.markdown)
  for claim in results["claims"]:
    value = report.format_difference(claim, 4) if claim["n"] else "no comparison"
    log(f"{claim['regime']:>5} {claim['objective']:>10} {claim['metric']:<16} "
        f"{claim['claim']:<9} {value}: {claim['verdict']}")
  trend = results["vocab_trend"]
  log(f"vocab trend ({trend['objective']}, {trend['metric']}): slope {trend['slope']:+.4f} "
      f"[{trend['low']:+.4f}, {trend['high']:+.4f}] per doubling of V: {trend['verdict']}")
  log(f"wall time {results['wall_seconds']:.0f} s")
  stem = os.path.splitext(json_path)[0]
  note = ("the committed results in benchmarks/results/, the default of a full run"
          if os.path.realpath(os.path.dirname(os.path.abspath(json_path)))
          == os.path.realpath(RESULTS) else "")
  outputs.report_outputs([json_path, stem + ".md", stem + ".png"], log, note)
  log(f"caches (reused by a rerun): {os.path.abspath(out_dir)}")
  return results


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.oracle", allow_abbrev=False,
      description="Known-oracle experiment: students trained on a small transformer's samples "
      "with CE, EMO+CE, EMO, TaiLr, MixCE and focal; exact precision and recall (PPL_oracle, "
      "PPL_test, forward/reverse KL, TV, EMO cost) over paired seeds. Offline.")
  d, q = Config(), QUICK

  def shown(field: str) -> str:
    value = getattr(d, field)
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    if field in q:
      quick = q[field]
      text += "; --quick: " + (",".join(map(str, quick)) if isinstance(quick, tuple) else
                               str(quick))
    return f"(default: {text})"

  parser.add_argument("--quick", action="store_true",
                      help="CI-sized run (about a minute) with the settings shown as '--quick' "
                      "below; writes into runs/oracle_quick/ (never benchmarks/results/) "
                      "(default: off)")
  parser.add_argument("--out", default=None,
                      help="cache folder, reused by a rerun (default: runs/oracle, or "
                      "runs/oracle_quick with --quick)")
  parser.add_argument("--json", default=None,
                      help="results file; the report (.md) and figure (.png) go beside it "
                      "(default: benchmarks/results/oracle.json, the committed results; with "
                      "--quick, oracle_quick.json inside --out)")
  parser.add_argument("--seeds", type=int, default=None,
                      help="paired seeds of the main objectives; fewer than two give no "
                      "interval and the verdict 'inconclusive at this size' " + shown("seeds"))
  parser.add_argument("--first-seed", type=int, default=None,
                      help="first seed " + shown("first_seed"))
  parser.add_argument("--student-steps", type=int, default=None,
                      help="training steps of a `same` student (cosine decay over them; the "
                      "best checkpoint by validation NLL is kept) " + shown("student_steps"))
  parser.add_argument("--few-seeds", type=int, default=None,
                      help="seeds of the small regime, EMO alone and focal (at most --seeds) "
                      + shown("few_seeds"))
  parser.add_argument("--sweep-vocab-sizes", default=None,
                      help="comma-separated vocabulary sizes besides the main one ('' = none; "
                      "the sweep runs the same regime) " + shown("sweep_vocab_sizes"))
  parser.add_argument("--objectives", default=None,
                      help="comma-separated subset of " + ",".join(BY_NAME) + "; ce, the "
                      "baseline, is always included " + shown("objectives"))
  parser.add_argument("--regimes", default=None,
                      help="comma-separated subset of same,small,finetune (finetune: pretrained "
                      "students fine-tuned on a shifted oracle); runs of another process on "
                      "the same --out are reused; without same there is no vocabulary sweep "
                      + shown("regimes"))
  parser.add_argument("--worker", action="store_true",
                      help="a second process beside the main one on the same --out: fills its "
                      "cache with the fine-tuning regime, then the sweep's other vocabulary "
                      "sizes and oracles in reverse order (the main process takes them in "
                      "order); writes no results file (default: off)")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard caches in --out made with other settings (default: refuse "
                      "to run on them)")
  parser.add_argument("--no-progress", action="store_true",
                      help="no tqdm progress bars (default: bars shown)")
  return parser


def config_from_args(args: argparse.Namespace) -> Config:
  """The Config of a parsed command line (raises UsageError)."""
  overrides = dict(QUICK) if args.quick else {}
  if args.first_seed is not None:
    if args.first_seed < 0:
      raise UsageError(f"--first-seed must be >= 0 (got {args.first_seed}).")
    overrides["first_seed"] = args.first_seed
  if args.sweep_vocab_sizes is not None:
    try:
      sizes = tuple(int(v) for v in args.sweep_vocab_sizes.split(",") if v.strip())
    except ValueError:
      raise UsageError(f"--sweep-vocab-sizes must be comma-separated integers (got "
                       f"{args.sweep_vocab_sizes!r}).") from None
    if any(v < MIN_VOCAB_SIZE for v in sizes):
      raise UsageError(f"--sweep-vocab-sizes must be >= {MIN_VOCAB_SIZE} (byte-level BPE; got {sizes}).")
    overrides["sweep_vocab_sizes"] = sizes
  for field in ("seeds", "few_seeds", "student_steps"):
    value = getattr(args, field)
    if value is not None:
      if value <= 0:
        raise UsageError(f"--{field.replace('_', '-')} must be positive (got {value}).")
      overrides[field] = value
  if args.objectives is not None:
    chosen = [o.strip().lower() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in chosen if o not in BY_NAME]
    if unknown or not chosen:
      raise UsageError(f"--objectives must be a comma-separated subset of {','.join(BY_NAME)} "
                       f"(got {args.objectives!r}).")
    overrides["objectives"] = tuple(o for o in BY_NAME if o in chosen or o == "ce")
  if args.regimes is not None:
    known = ("same", "small", "finetune")
    regimes = tuple(r for r in known if r in args.regimes.split(","))
    if not regimes or set(args.regimes.split(",")) - set(known):
      raise UsageError(f"--regimes must be a comma-separated subset of {','.join(known)} (got "
                       f"{args.regimes!r}).")
    overrides["regimes"] = regimes
  if "same" not in overrides.get("regimes", Config.regimes):
    overrides["sweep_vocab_sizes"] = ()  # the sweep is of the `same` regime
  config = Config(**overrides)
  if config.few_seeds > config.seeds:
    config = dataclasses.replace(config, few_seeds=config.seeds)
  if config.objectives[0] != "ce":
    raise UsageError("the objectives must start with ce (the baseline and the oracle's loss).")
  check_every_regime_compares(config)
  return config


def check_every_regime_compares(config: Config) -> None:
  """Refuses (before any training) objectives and regimes that leave a regime with CE alone:
  every claim is a paired comparison with the CE baseline, so such a regime would train and then
  have nothing to compare."""
  offered = {"same": [n for n in BY_NAME if n != "ce"],
             "small": [n for n in config.small_objectives if n != "ce"]}
  for regime, runs in config.plan(config.vocab_size).items():
    if len(runs) > 1:
      continue
    others = [r for r in config.regimes if r != regime]
    raise UsageError(
        f"--objectives {','.join(config.objectives)} leaves regime {regime} with CE alone: its "
        "claims compare an objective with the CE baseline, so it would train and then have "
        f"nothing to compare. Add one of {','.join(offered[regime])} to --objectives"
        + (f", or run only --regimes {','.join(others)}." if others else "."))


def output_paths(args: argparse.Namespace) -> tuple[str, str]:
  """``(out_dir, json_path)`` of a command line, checked before any work: both writable, and a
  ``--quick`` run never inside ``benchmarks/results/`` (raises UsageError)."""
  out_dir = args.out or outputs.quick_output_dir("oracle_quick" if args.quick else "oracle")
  default_json = (os.path.join(out_dir, "oracle_quick.json") if args.quick
                  else os.path.join(RESULTS, "oracle.json"))
  json_path = args.json or default_json
  outputs.check_output_dir(out_dir, "--out")
  if not args.worker:
    outputs.check_output_file(json_path, "--json", (".md", ".png"))
  if args.quick:
    outputs.check_quick_destination(json_path, "--json")
    outputs.check_quick_destination(out_dir, "--out")
  return out_dir, json_path


def main(argv: Sequence[str] | None = None) -> dict:
  """Command-line entry point (argument errors exit with a message, status 2)."""
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  try:
    config = config_from_args(args)
    out_dir, json_path = output_paths(args)
    return run_experiment(config, out_dir, json_path, overwrite=args.overwrite,
                          progress=not args.no_progress, worker=args.worker,
                          command=" ".join(["python -m benchmarks.oracle", *argv]))
  except UsageError as error:
    parser.error(str(error))
  raise AssertionError("unreachable")
