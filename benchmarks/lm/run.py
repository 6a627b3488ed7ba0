"""The experiment end to end: pretrain the shared base(s), then per regime fine-tune with every
objective over paired seeds, sample, measure, compare, report. Entry point:
``python benchmarks/lm_finetune.py``.

Phases (each resumable; results of finished phases are cached under ``--out``):

1. data: corpora, tokenizer, token streams (``data.npz``, ``tokenizer.json``);
2. the pretrained base(s) on code (``pretrain_b{b}.npz``), shared by every seed and regime;
3. per regime (C: adaptation to another package's code, the headline; A: held-out stdlib
   files; B: a domain shift): in regime C the CE pilot gate (``gate_C.json``), MixCE's ``η`` on
   validation MAUVE, then per seed every objective (and, in regime C, the cost ablation)
   fine-tuned from the base on the same batches (``ft_{regime}_s{s}_{name}.npz``), each keeping
   its best checkpoint by validation NLL, evaluated (``eval_{regime}_s{s}_{name}.json``), and
   CE sampled at the temperatures matching the EMO arms (``match_*.json``);
4. paired comparisons to CE with intervals and verdicts per regime; JSON, Markdown and PNG,
   written after each regime (a stopped run leaves the finished regimes reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from benchmarks import outputs
from benchmarks.lm.config import QUICK, Config, UsageError
from benchmarks.lm.gate import GateError

REPO_ROOT = outputs.REPO_ROOT
RESULTS = outputs.RESULTS

_FIELD_FLAGS = (
    ("--pretrain-corpus", "pretrain_corpus", str,
     "file or folder of text for pretraining"),
    ("--finetune-corpus", "finetune_corpus", str,
     "file or folder of text for fine-tuning"),
    ("--pretrain-chars", "pretrain_chars", int, "characters of pretraining text used"),
    ("--adapt-train-chars", "adapt_train_chars", int,
     "regime A: characters of held-out stdlib files to fine-tune on"),
    ("--adapt-test-chars", "adapt_test_chars", int,
     "regime A: characters of held-out stdlib files for testing (prompts and human sets)"),
    ("--package", "package", str,
     "regime C: import name of an installed package whose non-test source is fine-tuned on"),
    ("--package-train-chars", "package_train_chars", int,
     "regime C: characters of the package's files to fine-tune on"),
    ("--package-steps", "package_steps", int, "regime C: fine-tuning steps per objective"),
    ("--package-lr", "package_lr", float,
     "regime C: fine-tuning peak learning rate of the first pilot (the gate may change it)"),
    ("--vocab-size", "vocab_size", int, "BPE vocabulary size (>= 300)"),
    ("--seq-len", "seq_len", int, "context length"),
    ("--d-model", "d_model", int, "transformer width"),
    ("--layers", "num_layers", int, "transformer blocks"),
    ("--heads", "num_heads", int, "attention heads"),
    ("--batch-size", "batch_size", int, "sequences per step"),
    ("--pretrain-steps", "pretrain_steps", int, "pretraining steps per base"),
    ("--bases", "bases", int, "pretrained bases shared by the seeds (seed s uses base s %% B)"),
    ("--pretrain-lr", "pretrain_lr", float, "pretraining peak learning rate (AdamW)"),
    ("--finetune-steps", "finetune_steps", int, "regime A: fine-tuning steps per objective"),
    ("--finetune-lr", "finetune_lr", float, "regime A: fine-tuning peak learning rate"),
    ("--shift-steps", "shift_steps", int, "regime B: fine-tuning steps per objective"),
    ("--shift-lr", "shift_lr", float, "regime B: fine-tuning peak learning rate"),
    ("--eval-every", "eval_every", int, "steps between validation evaluations"),
    ("--seeds", "seeds", int, ("regime A: paired fine-tuning seeds (fewer than two give no "
                               "interval and the verdict 'inconclusive at this size')")),
    ("--shift-seeds", "shift_seeds", int, "regime B: paired fine-tuning seeds (the first ones)"),
    ("--first-seed", "first_seed", int, "seed of the first pair"),
    ("--prefix-len", "prefix_len", int, "prompt tokens of a held-out window"),
    ("--new-tokens", "new_tokens", int, "sampled tokens after each prompt"),
    ("--max-prompts", "max_prompts", int,
     "held-out prompts = samples per MAUVE side (at most; the human ceiling uses as many)"),
    ("--mauve-seeds", "mauve_seeds", int, "MAUVE k-means seeds per sampling run"),
    ("--chunk-size", "chunk_size", int, "vocabulary chunk of the fused loss path"),
)


_CORPUS_DEFAULTS = {"pretrain_corpus": "the Python standard library's source",
                    "finetune_corpus": "Python's reference manual, pydoc_data"}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="lm_finetune.py", allow_abbrev=False,
      description="Pretrain a small transformer LM on Python source, fine-tune copies with CE, "
      "EMO+CE, TaiLr and MixCE in three regimes (C: adaptation to another package's code, "
      "gated by a CE pilot; A: held-out stdlib files; B: a shift to Python's reference "
      "manual), and compare sampled-text quality (MAUVE), "
      "repetition, diversity, calibration and perplexity over paired seeds. Offline.")
  from benchmarks.lm.objectives import OBJECTIVES  # pylint: disable=import-outside-toplevel

  parser.add_argument("--quick", action="store_true",
                      help="CI-sized run with the smaller settings shown as '--quick' below; "
                      "writes into runs/lm_finetune_quick/ (never benchmarks/results/) "
                      "(default: off)")
  parser.add_argument("--out", default=None,
                      help="folder of checkpoints and caches, reused by a rerun (default: "
                      "runs/lm_finetune, or runs/lm_finetune_quick with --quick)")
  parser.add_argument("--json", default=None,
                      help="results file; the report (.md) and figure (.png) go beside it "
                      "(default: benchmarks/results/lm_finetune.json, the committed results; "
                      "with --quick, lm_finetune_quick.json inside --out)")
  parser.add_argument("--objectives", default=None,
                      help="comma-separated subset of " + ",".join(o.name for o in OBJECTIVES)
                      + "; ce, the baseline, is always included (default: all)")
  parser.add_argument("--seed-list", default=None,
                      help="comma-separated seeds of the paired runs, at least two, instead of "
                      "--seeds and --first-seed (default: none)")
  parser.add_argument("--regimes", default=None,
                      help="comma-separated regimes to run: C (another package's code, the "
                      "headline), A (held-out stdlib files), B (the reference manual), the "
                      "last two secondary (default: C; --quick: C,B)")
  parser.add_argument("--loss-path", choices=("plain", "fused"), default="fused",
                      help="plain: logits then losses; fused: emoloss.fused_token_stats; part of "
                      "the checkpoints' key (default: %(default)s)")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard checkpoints in --out made with other settings (default: "
                      "refuse to run on them)")
  parser.add_argument("--no-progress", action="store_true",
                      help="no tqdm progress bars (default: bars shown)")
  defaults = Config()
  for flag, field, kind, text in _FIELD_FLAGS:
    default = getattr(defaults, field)
    shown = _CORPUS_DEFAULTS.get(field, f"{default}")
    if field in QUICK:
      shown += f"; --quick: {QUICK[field]}"
    parser.add_argument(flag, dest=field, type=kind, default=None,
                        help=f"{text} (default: {shown})")
  return parser


def config_from_args(args: argparse.Namespace) -> Config:
  """The Config of a parsed command line, validated (raises UsageError)."""
  from benchmarks.lm import data  # pylint: disable=import-outside-toplevel
  from benchmarks.lm.objectives import OBJECTIVES  # pylint: disable=import-outside-toplevel

  overrides = dict(QUICK) if args.quick else {}
  for _, field, _, _ in _FIELD_FLAGS:
    if getattr(args, field) is not None:
      overrides[field] = getattr(args, field)
  known = [o.name for o in OBJECTIVES]
  if args.objectives is None:
    chosen = known
  else:
    chosen = [o.strip().lower() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in chosen if o not in known]
    if unknown or not chosen:
      raise UsageError(f"--objectives must be a comma-separated subset of {','.join(known)} "
                       f"(got {args.objectives!r}).")
  overrides["objectives"] = tuple(o for o in known if o in chosen or o == "ce")
  overrides["loss_path"] = args.loss_path
  if args.regimes is not None:
    regimes = tuple(r.strip().upper() for r in args.regimes.split(",") if r.strip())
    if not regimes or set(regimes) - {"C", "A", "B"}:
      raise UsageError(f"--regimes must be a comma-separated subset of C,A,B (got "
                       f"{args.regimes!r}).")
    overrides["regimes"] = tuple(r for r in ("C", "A", "B") if r in regimes)
  if args.seed_list is not None:
    try:
      overrides["seed_list"] = tuple(int(v) for v in args.seed_list.split(",") if v.strip())
    except ValueError:
      raise UsageError(f"--seed-list must be comma-separated integers (got "
                       f"{args.seed_list!r}).") from None
    if len(set(overrides["seed_list"])) < 2:
      raise UsageError("--seed-list needs at least two different seeds (paired comparisons).")
    overrides["seeds"] = len(overrides["seed_list"])
  config = Config(**overrides)
  for field in ("package_train_chars", "package_steps", "pretrain_chars", "adapt_train_chars", "adapt_test_chars", "vocab_size", "seq_len", "d_model",
                "num_layers", "num_heads", "batch_size", "bases", "pretrain_steps",
                "finetune_steps", "shift_steps", "eval_every", "seeds", "shift_seeds",
                "prefix_len", "new_tokens", "max_prompts", "mauve_seeds", "chunk_size"):
    if getattr(config, field) <= 0:
      raise UsageError(f"--{field.replace('_', '-')} must be positive "
                       f"(got {getattr(config, field)}).")
  if config.vocab_size < data.MIN_VOCAB_SIZE:
    raise UsageError(
        f"--vocab-size {config.vocab_size} is smaller than the model needs: a byte-level BPE "
        f"has 256 byte tokens plus {data.SPECIAL_TOKEN} before any merge, so use at least "
        f"{data.MIN_VOCAB_SIZE}.")
  if config.d_model % config.num_heads:
    raise UsageError(f"--d-model ({config.d_model}) must be divisible by --heads "
                     f"({config.num_heads}).")
  if config.prefix_len + config.new_tokens > config.seq_len:
    raise UsageError(f"--prefix-len + --new-tokens ({config.prefix_len + config.new_tokens}) "
                     f"must fit in --seq-len {config.seq_len}.")
  if not 0.0 < config.top_p <= 1.0:
    raise UsageError(f"--top-p must lie in (0, 1] (got {config.top_p}).")
  for flag, path in (("--pretrain-corpus", config.pretrain_corpus),
                     ("--finetune-corpus", config.finetune_corpus)):
    if path is not None:
      data.check_readable_corpus(path, flag)
  check_every_regime_compares(config)
  return config


def check_every_regime_compares(config: Config) -> None:
  """Refuses (before any training) a choice of ``--objectives`` / ``--regimes`` that leaves a
  regime with CE alone: every claim is a paired comparison with CE, so such a regime would
  train and then have nothing to report."""
  from benchmarks.lm import evaluation  # pylint: disable=import-outside-toplevel

  everything = dataclasses.replace(config, objectives=())
  offered = {r.key: r.objectives for r in evaluation.regimes(everything)}
  for regime in evaluation.regimes(config):
    if len(regime.objectives) > 1 or regime.ablation:
      continue
    others = [r for r in config.regimes if r != regime.key]
    can_add = [o for o in offered[regime.key] if o != "ce"]
    raise UsageError(
        f"--objectives {','.join(config.objectives)} leaves regime {regime.key} with CE alone: "
        f"its claims compare an objective with the CE baseline, so it would train and then "
        f"have nothing to compare. Add one of {','.join(can_add)} to --objectives"
        + (f", or run only --regimes {','.join(others)}." if others else "."))


# Settings that only add or drop runs, or change only the evaluation: every other setting (the
# loss path and its chunk size included: they change the trained weights' rounding) is part of
# the key of the checkpoints in --out.
_PER_RUN_FIELDS = ("objectives", "seeds", "first_seed", "seed_list", "shift_seeds",
                   "shift_objectives", "ablation", "select_eta", "regimes", "mauve_seeds",
                   "max_prompts", "top_p", "decodings")
_EVALUATION_FIELDS = ("mauve_seeds", "max_prompts", "top_p", "decodings")


def prepare_out_dir(out_dir: str, config: Config, overwrite: bool) -> None:
  """Creates ``out_dir``; refuses (or, with overwrite, clears) checkpoints of other settings.
  Settings that only add runs (objectives, seeds) or change the evaluation reuse checkpoints."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as error:
    raise UsageError(f"--out {out_dir!r}: cannot create the folder ({error}).") from None
  config_path = os.path.join(out_dir, "config.json")
  wanted = json.loads(json.dumps(dataclasses.asdict(config)))
  keyed = {k: v for k, v in wanted.items() if k not in _PER_RUN_FIELDS}
  if os.path.exists(config_path):
    stored = outputs.read_json(config_path)
    stored_keyed = {k: v for k, v in stored.items() if k in keyed}
    holds_data = any(n.endswith((".npz", ".json")) and n != "config.json"
                     for n in os.listdir(out_dir))
    if stored_keyed != keyed and holds_data:
      if not overwrite:
        changed = sorted(k for k in keyed if stored_keyed.get(k) != keyed[k])
        raise UsageError(f"{out_dir} holds checkpoints of other settings ({', '.join(changed)}); "
                         f"use another --out or --overwrite to discard them.")
      for name in os.listdir(out_dir):
        if name.endswith((".npz", ".json")):
          os.remove(os.path.join(out_dir, name))
    elif any(stored.get(k) != wanted[k] for k in _EVALUATION_FIELDS):
      # The evaluation settings changed: recompute the evaluations (not the training runs).
      for name in os.listdir(out_dir):
        if name.startswith(("eval_", "human_", "mixce_select_")) and name.endswith(".json"):
          os.remove(os.path.join(out_dir, name))
  outputs.write_json(config_path, wanted)


def run_experiment(config: Config, out_dir: str, json_path: str, *, overwrite: bool = False,
                   progress: bool = True, log=print, command: str = "") -> dict:
  """The whole experiment; returns the results and writes them (JSON, ``.md``, ``.png``)."""
  started = time.perf_counter()
  load_at_start = _load_average()
  prepare_out_dir(out_dir, config, overwrite)
  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.lm import (
    evaluation,  # pylint: disable=import-outside-toplevel
    report,  # pylint: disable=import-outside-toplevel
    stats,  # pylint: disable=import-outside-toplevel
  )
  from benchmarks.machine import machine_description  # pylint: disable=import-outside-toplevel

  data = data_lib.prepare_data(config, out_dir, log)
  ctx = evaluation.make_context(config, data, out_dir, progress, log)
  bases = evaluation.pretrain_bases(ctx)
  log(f"base(s) ready ({time.perf_counter() - started:.0f} s)")
  results = {
      "command": command,
      "config": json.loads(json.dumps(dataclasses.asdict(config))),
      "data": data.description,
      "machine": machine_description(("mauve-text", "scikit-learn", "tokenizers")),
      "setup": evaluation.setup_description(config, data),
      "pretraining": [{k: r[k] for k in ("best_step", "best_nll", "seconds", "curves")}
                      for _, r in bases],
      "per_regime": {},
  }
  for regime in evaluation.regimes(config):
    per_regime = evaluation.run_regime(ctx, regime, bases, progress=progress, log=log)
    per_regime["mean_curves"] = evaluation.mean_curves(per_regime["seeds"],
                                                       per_regime["objectives"])
    results["per_regime"][regime.key] = per_regime
    report.summarise(results)
    results["load_average"] = {"start": load_at_start, "end": _load_average()}
    results["wall_seconds"] = time.perf_counter() - started
    results["complete"] = regime.key == config.regimes[-1]
    report.write_results(json_path, results, report.plot, report.markdown)
    log(f"regime {regime.key} reported ({results['wall_seconds']:.0f} s)")
  for claim in results["claims"]:
    log(f"{claim['regime']} {claim['objective']:>10} {claim['metric']:<24} {claim['claim']:<9} "
        f"{stats.format_difference(claim, 4)}: {claim['verdict']}")
  log(f"wall time {results['wall_seconds']:.0f} s")
  from benchmarks.lm.metrics import FAISS_WARNING  # pylint: disable=import-outside-toplevel
  if outputs.SILENCED[FAISS_WARNING]:
    log(f"faiss printed '{FAISS_WARNING} ...' {outputs.SILENCED[FAISS_WARNING]} times (hidden): "
        "MAUVE's k-means has fewer than faiss's recommended 39 points per cluster (its default "
        "of about n/10 clusters)")
  stem = os.path.splitext(json_path)[0]
  outputs.report_outputs([json_path, stem + ".md", stem + ".png"], log, output_note(json_path))
  log(f"checkpoints and caches (reused by a rerun): {os.path.abspath(out_dir)}")
  return results


def output_note(json_path: str) -> str:
  """Says whether ``json_path`` is the committed results of ``benchmarks/results/``."""
  if os.path.realpath(os.path.dirname(os.path.abspath(json_path))) == os.path.realpath(RESULTS):
    return "the committed results in benchmarks/results/, the default of a full run"
  return ""


def _load_average() -> float | None:
  """The 1-minute load average (how busy the machine was; ``None`` where unknown)."""
  try:
    return os.getloadavg()[0]
  except (AttributeError, OSError):
    return None


def output_paths(args: argparse.Namespace) -> tuple[str, str]:
  """``(out_dir, json_path)`` of a command line, checked before any work: both writable, and a
  ``--quick`` run never inside ``benchmarks/results/`` (raises UsageError)."""
  out_dir = args.out or outputs.quick_output_dir(
      "lm_finetune_quick" if args.quick else "lm_finetune")
  default_json = (os.path.join(out_dir, "lm_finetune_quick.json") if args.quick
                  else os.path.join(RESULTS, "lm_finetune.json"))
  json_path = args.json or default_json
  outputs.check_output_dir(out_dir, "--out")
  outputs.check_output_file(json_path, "--json", (".md", ".png"))
  if args.quick:
    outputs.check_quick_destination(json_path, "--json")
    outputs.check_quick_destination(out_dir, "--out")
  return out_dir, json_path


def main(argv: Sequence[str] | None = None) -> dict:
  """Command-line entry point (argument and input errors exit with a message, status 2)."""
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  try:
    config = config_from_args(args)
    out_dir, json_path = output_paths(args)
    return run_experiment(config, out_dir, json_path, overwrite=args.overwrite,
                          progress=not args.no_progress,
                          command=" ".join(["python", "benchmarks/lm_finetune.py", *argv]))
  except UsageError as error:
    parser.error(str(error))
  except GateError as error:
    sys.exit(f"lm_finetune.py: stopped: {error}")
  raise AssertionError("unreachable")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
