"""Known-oracle experiment end to end: oracle, its samples, students, exact metrics, statistics.

Phases (each cached under ``--out``, so an interrupted run resumes):

1. data (``benchmarks.lm.data``): the Python standard library source and a byte-level BPE;
2. oracle ``P``: a small :class:`~benchmarks.lm.model.TransformerLM` trained with CE on that code
   by :func:`benchmarks.lm.train.train_run` (``oracle.npz``, best by validation NLL);
3. oracle samples (unbiased, KV-cached :func:`benchmarks.lm.model.sample`, each from the
   document separator): a training set and a held-out set (``samples.npz``);
4. per regime (``same``: the oracle's architecture; ``small``: a narrower, shallower student),
   seed and objective: a student from the seed's initialisation trained on the seed's batches
   (:func:`benchmarks.lm.train.train_step`; identical for every objective), then its exact metrics
   (:mod:`benchmarks.oracle.exact`) along held-out oracle samples and along its own unbiased
   samples (``student_{regime}_s{seed}_{objective}.json``);
5. paired comparisons to CE (``benchmarks.lm.stats``), JSON, Markdown and PNG
   (:mod:`benchmarks.oracle.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks.lm.config import Config as LMConfig
from benchmarks.lm.config import UsageError
from benchmarks.lm.data import cached_json
from benchmarks.lm.model import ModelConfig
from benchmarks.lm.objectives import OBJECTIVES, Objective
from benchmarks.lm.report import write_results

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")

# The objectives of the package that apply to LMs: the main experiment's six, EMO alone and focal.
ORACLE_OBJECTIVES = (
    *OBJECTIVES,
    Objective("emo_only", "EMO alone", "emo",
              "EMO cost only (Ren et al. §3; DRSY/EMO mode 2 without CE is not published)",
              emo_only=True),
    Objective("focal", "focal γ=2", "focal", "Lin et al. 2017, γ = 2 (control)", gamma=2.0),
)
BY_NAME = {o.name: o for o in ORACLE_OBJECTIVES}


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting that changes the result."""
  pretrain_chars: int = 400_000     # stdlib text the oracle is trained on
  vocab_size: int = 512
  seq_len: int = 32                 # sample length (separator + seq_len - 1 sampled tokens)
  oracle_d_model: int = 64
  oracle_layers: int = 2
  oracle_heads: int = 4
  oracle_steps: int = 600
  oracle_lr: float = 3e-3
  small_d_model: int = 32           # the capacity-mismatch student
  small_layers: int = 1
  small_heads: int = 2
  train_samples: int = 4096         # oracle samples the students learn from
  held_out_samples: int = 1024      # oracle samples for PPL_test / forward KL
  student_samples: int = 512        # student samples for PPL_oracle / reverse KL
  student_steps: int = 300
  student_lr: float = 3e-3
  batch_size: int = 32
  weight_decay: float = 0.01
  warmup_steps: int = 30
  seeds: int = 5
  first_seed: int = 0               # seeds first_seed .. first_seed + seeds - 1
  regimes: tuple[str, ...] = ("same", "small")
  objectives: tuple[str, ...] = tuple(o.name for o in ORACLE_OBJECTIVES)

  def oracle_config(self, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size, self.seq_len, self.oracle_d_model, self.oracle_layers,
                       self.oracle_heads)

  def student_config(self, regime: str, vocab_size: int) -> ModelConfig:
    if regime == "same":
      return self.oracle_config(vocab_size)
    return ModelConfig(vocab_size, self.seq_len, self.small_d_model, self.small_layers,
                       self.small_heads)

  def lm_config(self) -> LMConfig:
    """The main experiment's settings that its data module reads (tokenizer, corpora)."""
    return LMConfig(pretrain_chars=self.pretrain_chars, pretrain_val_chars=20_000,
                    vocab_size=self.vocab_size, seq_len=self.seq_len)


QUICK = {
    "pretrain_chars": 120_000, "vocab_size": 320, "seq_len": 16, "oracle_d_model": 32,
    "oracle_layers": 1, "oracle_heads": 2, "oracle_steps": 120, "small_d_model": 16,
    "small_heads": 2, "train_samples": 512, "held_out_samples": 256, "student_samples": 256,
    "student_steps": 60, "batch_size": 16, "warmup_steps": 10, "seeds": 2,
    "objectives": ("ce", "emo", "tailr_open"), "regimes": ("same",),
}


def train_oracle(config: Config, data, out_dir: str, progress: bool, log):
  """The oracle: CE on the stdlib code stream, best checkpoint by validation NLL."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.lm import train  # pylint: disable=import-outside-toplevel
  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel

  model_config = config.oracle_config(data.vocab_size)
  init = build_model(model_config, 12345)
  val = data_lib.covering_windows(data.streams["pretrain_val"], config.seq_len, 64)
  run = train.Run("oracle", 0, data.streams["pretrain_train"], config.oracle_steps,
                  config.oracle_lr, seed=12345, phase=0)
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


def sample_rows(model, count: int, seq_len: int, separator: int, key) -> np.ndarray:
  """``[count, seq_len]`` unbiased samples, each the separator then ``seq_len - 1`` tokens."""
  from benchmarks.lm.model import sample  # pylint: disable=import-outside-toplevel
  prefix = np.full((count, 1), separator, np.int32)
  return np.asarray(sample(model, prefix, key, seq_len - 1))


def oracle_samples(config: Config, oracle, separator: int, out_dir: str) -> dict:
  """Training and held-out oracle samples (cached), from independent keys."""
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  path = os.path.join(out_dir, "samples.npz")
  if os.path.exists(path):
    with np.load(path) as stored:
      return {k: stored[k] for k in stored.files}
  sets = {name: sample_rows(oracle, count, config.seq_len, separator, jax.random.key(i))
          for i, (name, count) in enumerate((("train", config.train_samples),
                                             ("held_out", config.held_out_samples),
                                             ("self", config.student_samples)))}
  data_lib.atomic_savez(path, **sets)
  return sets


def train_student(config: Config, model_config: ModelConfig, objectives, index: int, seed: int,
                  rows: np.ndarray, cost):
  """A student from initialisation ``seed`` trained with ``objectives[index]`` on batches of
  ``rows`` drawn by ``(seed, step)`` (the same for every objective); returns ``(model, record)``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import train  # pylint: disable=import-outside-toplevel
  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel

  model = build_model(model_config, seed)
  optimizer = nnx.Optimizer(model, train.adamw(config.weight_decay), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  schedule = train.learning_rate_schedule(config.student_lr, config.student_steps,
                                          config.warmup_steps)
  losses = []
  for step in range(config.student_steps):
    picks = np.random.default_rng([seed, 7, step]).integers(0, len(rows), config.batch_size)
    state, loss, nll = train.train_step(graphdef, state, rows[picks], cost, np.int32(index),
                                        np.float32(schedule(step)), objectives=objectives,
                                        path=train.LossPath())
    losses.append((loss, nll))
  values = np.asarray(jax.device_get(losses), np.float64)
  model, _ = nnx.merge(graphdef, state)
  finite = bool(np.all(np.isfinite(values))) and all(
      bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(nnx.state(model)))
  tail = values[-max(len(values) // 10, 1):]
  return model, {"final_loss": float(tail[:, 0].mean()), "final_nll": float(tail[:, 1].mean()),
                 "finite": finite}


def exact_metrics(oracle, student, held_out: np.ndarray, own_samples: np.ndarray,
                  unit_head) -> dict:
  """Recall metrics along held-out oracle samples, precision metrics along ``own_samples``."""
  import math  # pylint: disable=import-outside-toplevel

  from benchmarks.oracle import exact  # pylint: disable=import-outside-toplevel
  on_oracle = exact.along(oracle, student, held_out, unit_head)
  on_student = exact.along(oracle, student, own_samples, unit_head)
  return {
      "ppl_test": math.exp(on_oracle["nll_q"]), "log_ppl_test": on_oracle["nll_q"],
      "log_ppl_test_se": on_oracle["nll_q_se"],
      "ppl_oracle": math.exp(on_student["nll_p"]), "log_ppl_oracle": on_student["nll_p"],
      "log_ppl_oracle_se": on_student["nll_p_se"],
      "forward_kl": on_oracle["forward_kl"], "reverse_kl": on_student["reverse_kl"],
      **{f"{name}_oracle_prefixes": on_oracle[name] for name in ("tv", "emo_cost", "emo_gap")},
      **{f"{name}_student_prefixes": on_student[name] for name in ("tv", "emo_cost", "emo_gap")},
      "forward_kl_on_student": on_student["forward_kl"],
      "reverse_kl_on_oracle": on_oracle["reverse_kl"],
  }


def run_students(config: Config, oracle, samples: dict, vocab_size: int, separator: int,
                 out_dir: str, progress: bool, log) -> dict:
  """``{regime: [{name: metrics} per seed]}``, with ``untrained`` (the seed's initialisation)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle import exact  # pylint: disable=import-outside-toplevel

  objectives = tuple(BY_NAME[n] for n in config.objectives)
  cost = jnp.array(oracle.head, copy=True)  # EMO's cost embedding: the oracle's frozen head
  unit_head = exact.unit_rows(cost)
  total = len(config.regimes) * config.seeds * (len(objectives) + 1)
  bar = tqdm(total=total, desc="students", disable=not progress, dynamic_ncols=True)
  results = {}
  for regime in config.regimes:
    model_config = config.student_config(regime, vocab_size)
    results[regime] = []
    for seed in range(config.first_seed, config.first_seed + config.seeds):
      per_seed = {}
      sample_key = jax.random.key(1000 + seed)  # the same key for every student of a seed

      def untrained(seed=seed, sample_key=sample_key, model_config=model_config):
        model = build_model(model_config, seed)
        own = sample_rows(model, config.student_samples, config.seq_len, separator, sample_key)
        return dict(exact_metrics(oracle, model, samples["held_out"], own, unit_head),
                    finite=True)

      per_seed["untrained"] = cached_json(
          os.path.join(out_dir, f"student_{regime}_s{seed}_untrained.json"), untrained)
      bar.update()
      for index, objective in enumerate(objectives):
        bar.set_postfix_str(f"{regime} s{seed} {objective.name}", refresh=True)

        def trained(seed=seed, index=index, sample_key=sample_key, model_config=model_config):
          started = time.perf_counter()
          model, record = train_student(config, model_config, objectives, index, seed,
                                        samples["train"], cost)
          if not record["finite"]:
            return dict(record, seconds=time.perf_counter() - started)
          own = sample_rows(model, config.student_samples, config.seq_len, separator,
                            sample_key)
          return dict(exact_metrics(oracle, model, samples["held_out"], own, unit_head),
                      **record, seconds=time.perf_counter() - started)

        per_seed[objective.name] = cached_json(
            os.path.join(out_dir, f"student_{regime}_s{seed}_{objective.name}.json"), trained)
        if not per_seed[objective.name]["finite"]:
          log(f"{regime} seed {seed} {objective.name}: non-finite training (reported as unstable)")
        bar.update()
      results[regime].append(per_seed)
  bar.close()
  return results


def prepare_out_dir(out_dir: str, config: Config, overwrite: bool) -> None:
  """Creates ``out_dir``; refuses (or, with ``overwrite``, clears) caches of other settings.
  Changing only the seeds, regimes or objectives reuses every finished run."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as error:
    raise UsageError(f"--out {out_dir!r}: cannot create the folder ({error}).") from None
  path = os.path.join(out_dir, "config.json")
  wanted = json.loads(json.dumps(dataclasses.asdict(config)))
  keyed = {k: v for k, v in wanted.items() if k not in ("seeds", "first_seed", "regimes",
                                                       "objectives")}
  if os.path.exists(path):
    with open(path) as f:
      stored = {k: v for k, v in json.load(f).items() if k in keyed}
    if stored != keyed:
      if not overwrite:
        changed = sorted(k for k in keyed if stored.get(k) != keyed[k])
        raise UsageError(f"{out_dir} holds runs of other settings ({', '.join(changed)}); use "
                         f"another --out or --overwrite to discard them.")
      for name in os.listdir(out_dir):
        if name.endswith((".npz", ".json")):
          os.remove(os.path.join(out_dir, name))
  with open(path, "w") as f:
    json.dump(wanted, f, indent=1)


def run_experiment(config: Config, out_dir: str, json_path: str, *, overwrite: bool = False,
                   progress: bool = True, log=print, command: str = "") -> dict:
  """The whole experiment; returns the results and writes them (JSON, ``.md``, ``.png``)."""
  started = time.perf_counter()
  prepare_out_dir(out_dir, config, overwrite)
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.machine import machine_description  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle import exact, report  # pylint: disable=import-outside-toplevel

  data = data_lib.prepare_data(config.lm_config(), out_dir, log)
  separator = data.tokenizer.token_to_id(data_lib.SPECIAL_TOKEN)
  log(f"data ready ({time.perf_counter() - started:.0f} s)")
  oracle, oracle_record = train_oracle(config, data, out_dir, progress, log)
  log(f"oracle ready ({time.perf_counter() - started:.0f} s)")
  samples = oracle_samples(config, oracle, separator, out_dir)
  log(f"oracle samples ready ({time.perf_counter() - started:.0f} s)")
  unit_head = exact.unit_rows(oracle.head)
  reference = cached_json(os.path.join(out_dir, "oracle_self.json"), lambda: exact_metrics(
      oracle, oracle, samples["held_out"], samples["self"], unit_head))
  per_regime = run_students(config, oracle, samples, data.vocab_size, separator, out_dir,
                            progress, log)
  log(f"students done ({time.perf_counter() - started:.0f} s)")
  results = {
      "command": command,
      "config": json.loads(json.dumps(dataclasses.asdict(config))),
      "objectives": {o.name: {"label": o.label, "source": o.source}
                     for o in ORACLE_OBJECTIVES if o.name in config.objectives},
      "data": data.description,
      "oracle": {"training": {k: oracle_record[k] for k in ("best_step", "best_nll", "seconds")},
                 "self": reference,
                 "sampled_tokens": {k: int(v.shape[0] * (v.shape[1] - 1))
                                    for k, v in samples.items()}},
      "machine": machine_description(("tokenizers",)),
      "machine_note": ("the machine's 2 cores were shared with other jobs during the run"
                       if config.seeds >= 5 else "CI-sized run"),
      "per_regime": per_regime,
  }
  results["comparisons"] = report.compare(per_regime, list(config.objectives))
  results["claims"] = report.claims(results["comparisons"])
  results["wall_seconds"] = time.perf_counter() - started
  del jax
  write_results(json_path, results, report.plot, report.markdown)
  for claim in results["claims"]:
    log(f"{claim['regime']:>5} {claim['objective']:>10} {claim['metric']:<16} "
        f"{claim['claim']:<9} {claim['mean']:+.4f} [{claim['low']:+.4f}, {claim['high']:+.4f}] "
        f"({claim['improved']}/{claim['n']}): {claim['verdict']}")
  log(f"wall time {results['wall_seconds']:.0f} s; results {os.path.basename(json_path)}, .md, "
      ".png")
  return results


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.oracle", allow_abbrev=False,
      description="Known-oracle experiment: students trained on a small transformer's samples "
      "with CE, EMO+CE, EMO, TaiLr, MixCE and focal; exact precision and recall (PPL_oracle, "
      "PPL_test, forward/reverse KL, TV, EMO cost) over paired seeds. Offline.")
  parser.add_argument("--quick", action="store_true", help="CI-sized run (about a minute)")
  parser.add_argument("--out", default=None, help="cache folder (default runs/oracle[_quick])")
  parser.add_argument("--json", default=None, help="results file (default benchmarks/results/"
                      "oracle.json; with --quick, inside --out)")
  parser.add_argument("--seeds", type=int, default=None, help="paired seeds per regime")
  parser.add_argument("--first-seed", type=int, default=None, help="first seed (default 0)")
  parser.add_argument("--student-steps", type=int, default=None, help="training steps")
  parser.add_argument("--objectives", default=None,
                      help="comma-separated subset of " + ",".join(BY_NAME) + " (ce always in)")
  parser.add_argument("--regimes", default=None,
                      help="comma-separated subset of same,small (default both; runs of another "
                      "process on the same --out are reused)")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard caches in --out made with other settings")
  parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
  return parser


def config_from_args(args: argparse.Namespace) -> Config:
  """The Config of a parsed command line (raises UsageError)."""
  overrides = dict(QUICK) if args.quick else {}
  if args.first_seed is not None:
    if args.first_seed < 0:
      raise UsageError(f"--first-seed must be >= 0 (got {args.first_seed}).")
    overrides["first_seed"] = args.first_seed
  for field in ("seeds", "student_steps"):
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
    regimes = tuple(r for r in ("same", "small") if r in args.regimes.split(","))
    if not regimes or set(args.regimes.split(",")) - {"same", "small"}:
      raise UsageError(f"--regimes must be a comma-separated subset of same,small (got "
                       f"{args.regimes!r}).")
    overrides["regimes"] = regimes
  config = Config(**overrides)
  if config.objectives[0] != "ce":
    raise UsageError("the objectives must start with ce (the baseline and the oracle's loss).")
  return config


def main(argv: Sequence[str] | None = None) -> dict:
  """Command-line entry point (argument errors exit with a message, status 2)."""
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  try:
    config = config_from_args(args)
    out_dir = args.out or os.path.join(REPO_ROOT, "runs",
                                       "oracle_quick" if args.quick else "oracle")
    default_json = (os.path.join(out_dir, "oracle_quick.json") if args.quick
                    else os.path.join(RESULTS, "oracle.json"))
    return run_experiment(config, out_dir, args.json or default_json, overwrite=args.overwrite,
                          progress=not args.no_progress,
                          command=" ".join(["python -m benchmarks.oracle", *argv]))
  except UsageError as error:
    parser.error(str(error))
  raise AssertionError("unreachable")
