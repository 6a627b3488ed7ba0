"""Settings of the LM experiment: one frozen dataclass, the ``--quick`` overrides, and the error
type for bad inputs (reported without a traceback)."""

from __future__ import annotations

import dataclasses

from benchmarks.lm.model import ModelConfig


class UsageError(Exception):
  """A problem with the command line or the inputs, reported without a traceback."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting that changes the result (saved next to the checkpoints)."""
  pretrain_corpus: str | None = None   # None: the Python standard library source.
  finetune_corpus: str | None = None   # None: pydoc_data.topics (Python reference manual).
  pretrain_chars: int = 1_500_000      # training text taken from the pretraining corpus
  pretrain_val_chars: int = 60_000     # held-out pretraining text (forgetting)
  held_out_every: int = 4              # every k-th fine-tuning document is held out ...
  # ... and the held-out documents alternate between validation and test.
  vocab_size: int = 2048
  seq_len: int = 64
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  batch_size: int = 16
  eval_batch_size: int = 64            # rows per evaluation batch (held-out windows)
  pretrain_steps: int = 500
  pretrain_lr: float = 3e-3
  finetune_steps: int = 300
  finetune_lr: float = 1e-3
  weight_decay: float = 0.01
  warmup_steps: int = 30
  eval_every: int = 30                 # validation NLL (checkpoint choice) every k steps
  seeds: int = 5                       # paired (base, fine-tuning seed) runs
  first_seed: int = 0
  seed_list: tuple[int, ...] = ()      # explicit seeds (overrides seeds / first_seed)
  prefix_len: int = 16                 # generation: prefix tokens of a held-out window ...
  new_tokens: int = 48                 # ... and sampled continuation tokens
  max_prompts: int = 256               # held-out windows used as prompts (at most)
  sampling_runs: int = 2               # sampling runs per model and decoding
  top_p: float = 0.95                  # the second decoding (the first is unbiased, top-p 1)
  mauve_seeds: int = 1                 # MAUVE k-means seeds per sampling run (distinct per run)
  tfidf_dim: int = 64                  # TruncatedSVD dimension of the TF-IDF featuriser
  objectives: tuple[str, ...] = ()     # () = every objective of objectives.OBJECTIVES
  loss_path: str = "fused"             # fused (emoloss.fused_ce_emo) | plain
  chunk_size: int = 1024               # vocabulary chunk of the fused path

  def seed_values(self) -> tuple[int, ...]:
    """The paired runs' seeds: ``seed_list`` if given, else ``first_seed ..`` (``seeds``)."""
    return self.seed_list or tuple(range(self.first_seed, self.first_seed + self.seeds))

  def model_config(self, vocab_size: int | None = None) -> ModelConfig:
    return ModelConfig(vocab_size or self.vocab_size, self.seq_len, self.d_model,
                       self.num_layers, self.num_heads)


QUICK = {
    "pretrain_chars": 300_000, "pretrain_val_chars": 20_000, "vocab_size": 512,
    "d_model": 32, "num_layers": 1, "num_heads": 2, "batch_size": 8, "pretrain_steps": 150,
    "pretrain_lr": 3e-3, "finetune_steps": 100, "finetune_lr": 1e-3, "warmup_steps": 10,
    "eval_every": 50, "seeds": 2, "max_prompts": 48, "sampling_runs": 1, "mauve_seeds": 1,
    "tfidf_dim": 16, "chunk_size": 256,
}
