"""Settings of the LM experiment: one frozen dataclass, the ``--quick`` overrides, and the error
type for bad inputs (reported without a traceback)."""

from __future__ import annotations

import dataclasses

from benchmarks.lm.model import ModelConfig
from benchmarks.outputs import UsageError  # noqa: F401  (one error type for every experiment)


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting that changes the result (saved next to the checkpoints).

  Three regimes share one tokenizer and the pretrained base(s); the default run makes regime C
  only (A and B are secondary, ``--regimes C,A,B``), which keeps it within 90 minutes on two
  idle cores:

  * regime C, the headline (``package_*``): the base adapted to another package's code (the
    non-test source of ``package``, split by file), gated by a one-seed CE pilot (base/CE test
    perplexity ratio within ``gate_ratio`` and CE's best validation checkpoint in the second
    half of the run; see :mod:`benchmarks.lm.gate`), ``seeds`` paired seeds, the cost ablation,
    MixCE's ``η`` chosen on validation MAUVE, and a CE arm at the temperature matching each
    EMO arm's sample entropy;
  * regime A (``adapt_*``): the base fine-tuned on held-out standard-library files (the
    pretraining domain), ``seeds`` paired seeds;
  * regime B, a domain shift (``shift_*``): the same base fine-tuned on Python's reference manual
    at a larger learning rate, ``shift_seeds`` seeds.
  """
  pretrain_corpus: str | None = None   # None: the Python standard library source.
  finetune_corpus: str | None = None   # None: pydoc_data.topics (Python reference manual).
  pretrain_chars: int = 6_000_000      # training text taken from the pretraining corpus
  pretrain_val_chars: int = 60_000     # held-out pretraining text (forgetting)
  adapt_val_chars: int = 300_000       # regime A: held-out stdlib files (by file), validation
  adapt_test_chars: int = 800_000    # ... test (prompts, human continuations, perplexity)
  adapt_train_chars: int = 130_000     # ... fine-tuning text
  package: str = "sklearn"            # regime C: import name of an installed package
  package_val_chars: int = 250_000     # regime C: validation files (checkpoint choice, η, T)
  package_test_chars: int = 900_000    # ... test files (prompts, human sets, perplexity)
  package_train_chars: int = 1_500_000  # ... fine-tuning files
  package_steps: int = 160             # regime C: fine-tuning steps (the pilot may change them)
  # ... peak learning rate (the pilot may change it). Calibrated with the default base: CE pilots
  # at 1e-3, 5e-4 and 2.5e-4 gave base/CE test perplexity ratios 4.32, 3.50 and 2.71 (above the
  # gate); 4e-5 gave 1.47 with the best checkpoint at the last step (the gate passes).
  package_lr: float = 4e-5
  gate_ratio: tuple[float, float] = (1.15, 1.6)  # pilot: base/CE test perplexity ratio
  gate_attempts: int = 3               # pilots before the run stops (the adjustment rule)
  enforce_gate: bool = True            # False: record a failed gate and go on (--quick)
  match_prompts: int = 250             # validation prompts for the temperature match
  match_iterations: int = 6            # bisection steps of the matched temperature
  held_out_every: int = 4              # every k-th manual topic is held out (regime B) ...
  # ... and the held-out documents alternate between validation and test.
  vocab_size: int = 2048
  seq_len: int = 128
  d_model: int = 128
  num_layers: int = 3
  num_heads: int = 4
  batch_size: int = 16                 # pretraining batch (sequences)
  finetune_batch_size: int = 8         # fine-tuning batch (both regimes)
  eval_batch_size: int = 64            # rows per evaluation batch (held-out windows)
  val_tokens: int = 16_384             # validation NLL (checkpoint choice) on this many tokens
  test_tokens: int = 65_536            # token metrics on this many test tokens
  bases: int = 1                       # pretrained bases; seed s fine-tunes base s % bases
  pretrain_steps: int = 4800
  pretrain_lr: float = 3e-3
  finetune_steps: int = 40             # regime A: about one epoch of adapt_train
  finetune_lr: float = 3e-4
  shift_steps: int = 60                # regime B
  shift_lr: float = 1e-3
  weight_decay: float = 0.01
  warmup_steps: int = 50
  eval_every: int = 5                  # validation NLL (checkpoint choice) every k steps
  plateau_tol: float = 0.01            # plateau: the last quarter improves the best val NLL
  #                                      by at most this many nats
  seeds: int = 5                       # regime A: paired fine-tuning seeds
  first_seed: int = 0
  seed_list: tuple[int, ...] = ()      # explicit seeds (overrides seeds / first_seed)
  shift_seeds: int = 3                 # regime B: the first seeds of regime A
  prefix_len: int = 32                 # generation: prefix tokens of a held-out window ...
  new_tokens: int = 80                 # ... and sampled continuation tokens
  max_prompts: int = 1000              # prompts per side (and human ceiling sets of this size)
  top_p: float = 0.95                  # top-p decoding (off unless in decodings)
  decodings: tuple[str, ...] = ("unbiased", "greedy")
  mauve_seeds: int = 3                 # MAUVE k-means seeds per sampling run
  tfidf_dim: int = 64                  # TruncatedSVD dimension of the TF-IDF featuriser
  objectives: tuple[str, ...] = ()     # () = every objective of objectives.OBJECTIVES
  shift_objectives: tuple[str, ...] = ("ce", "emo", "emo_cap3")
  ablation: bool = True                # regime C: the cost ablation of the uncapped mix
  select_eta: bool = True              # regime C: MixCE's η on validation MAUVE (first seed)
  mixce_etas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)  # ... from these
  greedy_prompts: int = 250            # greedy continuations (repetition) per model
  regimes: tuple[str, ...] = ("C",)     # the headline; A and B are opt-in (--regimes C,A,B)
  primary_featuriser: str = "tfidf"    # MAUVE's primary features (code-token n-gram TF-IDF)
  loss_path: str = "fused"             # fused (emoloss.fused_token_stats) | plain
  chunk_size: int = 1024               # vocabulary chunk of the fused path

  def seed_values(self) -> tuple[int, ...]:
    """Regime A's seeds: ``seed_list`` if given, else ``first_seed ..`` (``seeds``)."""
    return self.seed_list or tuple(range(self.first_seed, self.first_seed + self.seeds))

  def model_config(self, vocab_size: int | None = None) -> ModelConfig:
    return ModelConfig(vocab_size or self.vocab_size, self.seq_len, self.d_model,
                       self.num_layers, self.num_heads)


QUICK = {
    "pretrain_chars": 200_000, "pretrain_val_chars": 20_000, "adapt_val_chars": 30_000,
    "adapt_test_chars": 40_000, "adapt_train_chars": 30_000, "vocab_size": 512, "seq_len": 40,
    "d_model": 32, "num_layers": 1, "num_heads": 2, "batch_size": 8, "val_tokens": 4096,
    "test_tokens": 8192, "finetune_batch_size": 8, "pretrain_steps": 200, "pretrain_lr": 3e-3,
    "finetune_steps": 20, "finetune_lr": 3e-4, "shift_steps": 20, "warmup_steps": 10,
    "eval_every": 5, "seeds": 2, "shift_seeds": 2, "prefix_len": 8, "new_tokens": 24,
    "max_prompts": 100, "greedy_prompts": 50, "mauve_seeds": 3, "tfidf_dim": 16,
    "chunk_size": 256, "shift_objectives": ("ce", "emo"), "mixce_etas": (0.3, 0.7),
    "package_val_chars": 30_000, "package_test_chars": 40_000, "package_train_chars": 60_000,
    "package_steps": 20, "package_lr": 3e-3, "enforce_gate": False, "match_prompts": 50,
    "match_iterations": 3, "regimes": ("C", "B"),
}
