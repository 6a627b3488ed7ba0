"""The experiment end to end: pretrain bases, fine-tune with every objective, sample, measure,
compare over paired seeds, report. Entry point: ``python benchmarks/lm_finetune.py``.

Phases (each resumable; results of finished phases are cached under ``--out``):

1. data: corpora, tokenizer, token streams (``data.npz``, ``tokenizer.json``);
2. per seed ``s``: pretrain a base from initialisation ``s`` on code (``pretrain_s{s}.npz``),
   then fine-tune a copy with every objective on the same batches (``ft_s{s}_{name}.npz``),
   each keeping its best checkpoint by validation NLL;
3. per seed and model (untrained, pretrained base, each objective): test-split token metrics,
   samples from held-out prompts (unbiased and top-p, several runs), MAUVE with two featurisers,
   diversity (``eval_s{s}_{name}.json``);
4. paired comparisons to CE with intervals and verdicts; JSON, Markdown and PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from benchmarks.lm.config import QUICK, Config, UsageError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")

_FIELD_FLAGS = (
    ("--pretrain-corpus", "pretrain_corpus", str,
     "file or folder of text for pretraining (default: the Python stdlib source)"),
    ("--finetune-corpus", "finetune_corpus", str,
     "file or folder of text for fine-tuning (default: Python's reference manual, pydoc_data)"),
    ("--pretrain-chars", "pretrain_chars", int, "characters of pretraining text used"),
    ("--vocab-size", "vocab_size", int, "BPE vocabulary size (>= 300)"),
    ("--seq-len", "seq_len", int, "context length"),
    ("--d-model", "d_model", int, "transformer width"),
    ("--layers", "num_layers", int, "transformer blocks"),
    ("--heads", "num_heads", int, "attention heads"),
    ("--batch-size", "batch_size", int, "sequences per step"),
    ("--pretrain-steps", "pretrain_steps", int, "pretraining steps per base"),
    ("--pretrain-lr", "pretrain_lr", float, "pretraining peak learning rate (AdamW)"),
    ("--finetune-steps", "finetune_steps", int, "fine-tuning steps per objective"),
    ("--finetune-lr", "finetune_lr", float, "fine-tuning peak learning rate (AdamW)"),
    ("--eval-every", "eval_every", int, "steps between validation evaluations"),
    ("--seeds", "seeds", int, "paired runs (pretrained base + fine-tuning seed)"),
    ("--first-seed", "first_seed", int, "seed of the first pair"),
    ("--prefix-len", "prefix_len", int, "prompt tokens of a held-out window"),
    ("--new-tokens", "new_tokens", int, "sampled tokens after each prompt"),
    ("--max-prompts", "max_prompts", int, "held-out prompts (at most)"),
    ("--sampling-runs", "sampling_runs", int, "sampling runs per model and decoding"),
    ("--top-p", "top_p", float, "nucleus mass of the second decoding"),
    ("--mauve-seeds", "mauve_seeds", int, "MAUVE k-means seeds averaged"),
    ("--chunk-size", "chunk_size", int, "vocabulary chunk of the fused loss path"),
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="lm_finetune.py", allow_abbrev=False,
      description="Pretrain small transformer LMs on Python source, fine-tune copies on "
      "Python's reference manual with CE, EMO+CE, TaiLr and MixCE, and compare sampled-text "
      "quality (MAUVE), diversity, calibration and perplexity over paired seeds. Offline.")
  parser.add_argument("--quick", action="store_true", help="CI-sized run")
  parser.add_argument("--out", default=None,
                      help="checkpoint folder (default runs/lm_finetune[_quick])")
  parser.add_argument("--json", default=None, help="results file (default benchmarks/results/"
                      "lm_finetune.json; with --quick, inside --out)")
  parser.add_argument("--objectives", default=None,
                      help="comma-separated subset of the objectives (ce is always included)")
  parser.add_argument("--seed-list", default=None,
                      help="comma-separated seeds of the paired runs (instead of --seeds, "
                      "--first-seed)")
  parser.add_argument("--loss-path", choices=("plain", "fused"), default="fused",
                      help="plain: logits then losses; fused: emoloss.fused_ce_emo")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard checkpoints in --out made with other settings")
  parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
  for flag, field, kind, text in _FIELD_FLAGS:
    parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
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
  for field in ("pretrain_chars", "vocab_size", "seq_len", "d_model", "num_layers", "num_heads",
                "batch_size", "pretrain_steps", "finetune_steps", "eval_every", "seeds",
                "prefix_len", "new_tokens", "max_prompts", "sampling_runs", "mauve_seeds",
                "chunk_size"):
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
  return config


_PER_RUN_FIELDS = ("objectives", "loss_path", "chunk_size", "seeds", "first_seed", "seed_list",
                   "sampling_runs", "mauve_seeds", "max_prompts", "top_p")
_EVALUATION_FIELDS = ("sampling_runs", "mauve_seeds", "max_prompts", "top_p")


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
    with open(config_path) as f:
      stored = json.load(f)
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
        if name.startswith("eval_") and name.endswith(".json"):
          os.remove(os.path.join(out_dir, name))
  with open(config_path, "w") as f:
    json.dump(wanted, f, indent=1)


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
  )
  from benchmarks.machine import machine_description  # pylint: disable=import-outside-toplevel

  data = data_lib.prepare_data(config, out_dir, log)
  per_seed = evaluation.run_seeds(config, data, out_dir, progress=progress, log=log)
  names = ["untrained", "pretrained", *config.objectives]
  flat = [{n: report.flat_metrics(s["models"][n], s["human"]) for n in names} for s in per_seed]
  comparisons = report.compare(flat, list(config.objectives))
  results = {
      "command": command,
      "config": json.loads(json.dumps(dataclasses.asdict(config))),
      "data": data.description,
      "machine": machine_description(("mauve-text", "scikit-learn", "tokenizers")),
      "load_average": {"start": load_at_start, "end": _load_average()},
      "wall_seconds": time.perf_counter() - started,
      "setup": evaluation.setup_description(config, data),
      "seeds": per_seed,
      "human": [s["human"] for s in per_seed],
      "flat": flat,
      "comparisons": comparisons,
      "claims": [dict(comparisons[c.objective][c.metric], **c._asdict())
                 for c in report.CLAIMS if c.objective in comparisons],
      "mean_curves": evaluation.mean_curves(per_seed, config.objectives),
  }
  report.write_results(json_path, results, report.plot, report.markdown)
  for claim in results["claims"]:
    log(f"{claim['objective']:>10} {claim['metric']:<24} {claim['claim']:<9} "
        f"{claim['mean']:+.4f} [{claim['low']:+.4f}, {claim['high']:+.4f}] "
        f"({claim['improved']}/{claim['n']}): {claim['verdict']}")
  log(f"wall time {results['wall_seconds']:.0f} s; results {os.path.basename(json_path)}, "
      ".md, .png")
  return results


def _load_average() -> float | None:
  """The 1-minute load average (how busy the machine was; ``None`` where unknown)."""
  try:
    return os.getloadavg()[0]
  except (AttributeError, OSError):
    return None


def main(argv: Sequence[str] | None = None) -> dict:
  """Command-line entry point (argument and input errors exit with a message, status 2)."""
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  try:
    config = config_from_args(args)
    out_dir = args.out or os.path.join(
        REPO_ROOT, "runs", "lm_finetune_quick" if args.quick else "lm_finetune")
    default_json = (os.path.join(out_dir, "lm_finetune_quick.json") if args.quick
                    else os.path.join(RESULTS, "lm_finetune.json"))
    json_path = args.json or default_json
    folder = os.path.dirname(os.path.abspath(json_path))
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as error:
      raise UsageError(f"cannot create the folder of --json {json_path!r} ({error}).") from None
    return run_experiment(config, out_dir, json_path, overwrite=args.overwrite,
                          progress=not args.no_progress,
                          command=" ".join(["python", "benchmarks/lm_finetune.py", *argv]))
  except UsageError as error:
    parser.error(str(error))
  raise AssertionError("unreachable")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
