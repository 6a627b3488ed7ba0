"""Offline LM fine-tuning experiment: cross-entropy vs EMO(+CE) vs TaiLr.

One command, no download::

  python benchmarks/lm_finetune.py            # default run (a few minutes on 2 CPU cores)
  python benchmarks/lm_finetune.py --quick    # CI-sized run

What it does:

1. Text already on the machine, shipped with the CPython interpreter that runs the script (so
   the exact text, and the numbers, depend on the Python version; it is recorded in the JSON):

   * pretraining domain, code: the standard library's own ``.py`` sources under
     ``sysconfig.get_paths()["stdlib"]`` (``test``/``tests``, ``test_*.py``, ``site-packages``,
     ``dist-packages``, ``idle_test``, ``lib2to3``, ``turtledemo``, ``ensurepip``,
     ``lib-dynload`` and ``pydoc_data`` left out), in a fixed shuffled order;
   * fine-tuning domain, prose: Python's reference manual as ``pydoc``'s help topics,
     ``pydoc_data/topics.py`` (the dict ``pydoc_data.topics.topics``, generated from the
     documentation's ``reference`` and ``library`` pages), one document per topic; every 8th topic
     is held out.

   Both are part of CPython, distributed under the PSF License Agreement (Python Software
   Foundation License, version 2; the documentation is under the same licence, with the
   example code also under the Zero-Clause BSD licence). ``--pretrain-corpus`` /
   ``--finetune-corpus`` point at other text instead (a file, or a folder of
   ``.txt``/``.md``/``.rst``/``.py`` files).
2. A byte-level BPE tokenizer (``tokenizers``) trained locally on the pretraining text, then a
   small decoder-only transformer (Flax NNX, tied embeddings) pretrained with cross-entropy on
   code and fine-tuned, from identical copies, on documentation prose with (a) cross-entropy,
   (b) EMO + CE (the published per-token mix; the frozen cost embedding is a copy of the
   pretrained LM head) and (c) TaiLr -- same optimiser, steps, seed and batch order.
3. Held-out metrics on the fine-tuning domain (perplexity, next-token accuracy, expected
   embedding distance = the EMO cost under the pretrained head) and on the pretraining domain
   (forgetting), printed as a table, saved as JSON, and validation curves in one PNG.
4. tqdm progress with the running loss, ``.npz`` checkpoints under ``--out`` (``runs/`` by
   default); a rerun with the same settings resumes (finished phases are loaded, an interrupted
   one continues from its last checkpoint with the same batches). The table also goes to a
   Markdown file next to the JSON.

JAX runs on the CPU unless ``JAX_PLATFORMS`` says otherwise (the reported timings are CPU ones).

References:
  Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language Modeling",
  ICLR 2024 (arXiv 2310.04691). Ji et al., "Tailoring Language Generation Models under Total
  Variation Distance", ICLR 2023 (arXiv 2302.13344).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

OBJECTIVES = ("ce", "emo", "tailr")
OBJECTIVE_LABELS = {"ce": "CE", "emo": "EMO+CE", "tailr": "TaiLr"}
SPECIAL_TOKEN = "<|endoftext|>"
# A byte-level BPE needs its 256 byte tokens and the document separator before any merge; fewer
# than this many tokens cannot even spell arbitrary text, and the model's embedding must cover
# every id the tokenizer emits.
MIN_VOCAB_SIZE = 257 + 43  # 300: the byte alphabet, <|endoftext|> and a few merges.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
# Parts of the stdlib tree that are not the standard library's own source, or that are the
# fine-tuning text itself (pydoc_data holds the reference manual).
STDLIB_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__",
    "lib-dynload", "lib2to3", "turtledemo", "ensurepip",
})


class UsageError(Exception):
  """A problem with the command line or the inputs, reported without a traceback."""


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting that changes the result (saved next to the checkpoints)."""
  pretrain_corpus: str | None = None   # None: the Python standard library source.
  finetune_corpus: str | None = None   # None: pydoc_data.topics (Python reference manual).
  pretrain_chars: int = 2_000_000         # training text taken from the pretraining corpus
  pretrain_val_chars: int = 100_000
  finetune_val_every: int = 8             # every k-th fine-tuning document is held out
  vocab_size: int = 4096
  seq_len: int = 64
  d_model: int = 96
  num_layers: int = 2
  num_heads: int = 4
  batch_size: int = 16
  pretrain_steps: int = 700
  pretrain_lr: float = 2e-3
  finetune_steps: int = 200
  finetune_lr: float = 1e-3
  weight_decay: float = 0.01
  warmup_steps: int = 50
  eval_every: int = 25
  eval_tokens: int = 8192                 # held-out tokens per evaluation, spread over the text
  seed: int = 0
  objectives: tuple[str, ...] = OBJECTIVES
  emo_mode: int = 1
  tailr_gamma: float = 0.8
  tailr_min_weight: float = 0.2           # thu-coai/TaiLr's fairseq recipes: density-min-weight 0.2
  loss_path: str = "auto"                 # auto | fused | plain
  chunk_size: int = 1024                  # vocabulary chunk of the fused path


QUICK = {
    "pretrain_chars": 500_000, "pretrain_val_chars": 40_000, "vocab_size": 1024, "seq_len": 64,
    "d_model": 64, "num_layers": 2, "num_heads": 2, "batch_size": 16, "pretrain_steps": 200,
    "pretrain_lr": 3e-3, "finetune_steps": 60, "finetune_lr": 1e-3, "warmup_steps": 20,
    "eval_every": 20, "eval_tokens": 4096, "chunk_size": 512,
}

# Flags that override a Config field: (flag, field, type, help).
_FIELD_FLAGS = (
    ("--pretrain-corpus", "pretrain_corpus", str,
     "file or folder of text for pretraining (default: the Python stdlib source)"),
    ("--finetune-corpus", "finetune_corpus", str,
     "file or folder of text for fine-tuning (default: Python's reference manual, pydoc_data)"),
    ("--pretrain-chars", "pretrain_chars", int, "characters of pretraining text used"),
    ("--vocab-size", "vocab_size", int, f"BPE vocabulary size (>= {MIN_VOCAB_SIZE})"),
    ("--seq-len", "seq_len", int, "tokens per training sequence"),
    ("--d-model", "d_model", int, "transformer width"),
    ("--layers", "num_layers", int, "transformer blocks"),
    ("--heads", "num_heads", int, "attention heads"),
    ("--batch-size", "batch_size", int, "sequences per step"),
    ("--pretrain-steps", "pretrain_steps", int, "pretraining steps"),
    ("--pretrain-lr", "pretrain_lr", float, "pretraining peak learning rate (AdamW)"),
    ("--finetune-steps", "finetune_steps", int, "fine-tuning steps per objective"),
    ("--finetune-lr", "finetune_lr", float, "fine-tuning peak learning rate (AdamW)"),
    ("--eval-every", "eval_every", int, "steps between validation evaluations"),
    ("--eval-tokens", "eval_tokens", int, "held-out tokens per evaluation (cap)"),
    ("--seed", "seed", int, "seed of the initialisation and of the batch order"),
    ("--emo-mode", "emo_mode", int, "EMO+CE combination: 1 (more weight on MLE) or 2"),
    ("--tailr-gamma", "tailr_gamma", float, "TaiLr density-ratio threshold gamma in [0, 1]"),
    ("--tailr-min-weight", "tailr_min_weight", float, "TaiLr lower clip of the token weight"),
    ("--chunk-size", "chunk_size", int, "vocabulary chunk of the fused loss path"),
)


def build_parser() -> argparse.ArgumentParser:
  """The command line (unknown flags are rejected by argparse with a usage message)."""
  parser = argparse.ArgumentParser(
      prog="lm_finetune.py", allow_abbrev=False,
      description="Pretrain a small transformer LM on Python source code, fine-tune copies on "
      "Python's reference manual with CE, EMO+CE and TaiLr, and compare them on held-out text. "
      "Offline; everything comes with CPython and the installed packages.")
  parser.add_argument("--quick", action="store_true", help="CI-sized run (about a minute)")
  parser.add_argument("--out", default=None,
                      help="checkpoint folder (default runs/lm_finetune, runs/lm_finetune_quick)")
  parser.add_argument("--json", default=None, help="results file (default "
                      "benchmarks/results/lm_finetune.json; with --quick, inside --out)")
  parser.add_argument("--plot", default=None, help="validation-curve PNG (default next to --json)")
  parser.add_argument("--objectives", default=",".join(OBJECTIVES),
                      help="comma-separated subset of " + ",".join(OBJECTIVES))
  parser.add_argument("--loss-path", choices=("auto", "fused", "plain"), default="auto",
                      help="fused: emoloss.fused_ce_emo from hidden states (no [N, V] logits); "
                      "plain: logits then emoloss losses; auto: fused when available")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard checkpoints in --out made with other settings")
  parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
  for flag, field, kind, text in _FIELD_FLAGS:
    parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
  return parser


def config_from_args(args: argparse.Namespace) -> Config:
  """The Config of a parsed command line, validated (raises UsageError)."""
  overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
  for _, field, _, _ in _FIELD_FLAGS:
    value = getattr(args, field)
    if value is not None:
      overrides[field] = value
  objectives = tuple(o.strip().lower() for o in args.objectives.split(",") if o.strip())
  unknown = [o for o in objectives if o not in OBJECTIVES]
  if unknown or not objectives:
    raise UsageError(f"--objectives must be a comma-separated subset of {','.join(OBJECTIVES)} "
                     f"(got {args.objectives!r}).")
  overrides["objectives"] = objectives
  overrides["loss_path"] = args.loss_path
  config = Config(**overrides)
  positive = ("pretrain_chars", "vocab_size", "seq_len", "d_model", "num_layers", "num_heads",
              "batch_size", "pretrain_steps", "finetune_steps", "eval_every", "eval_tokens",
              "chunk_size")
  for field in positive:
    if getattr(config, field) <= 0:
      raise UsageError(f"--{field.replace('_', '-')} must be positive "
                       f"(got {getattr(config, field)}).")
  if config.vocab_size < MIN_VOCAB_SIZE:
    raise UsageError(
        f"--vocab-size {config.vocab_size} is smaller than the model needs: a byte-level BPE "
        f"has 256 byte tokens plus {SPECIAL_TOKEN} before any merge, so use at least "
        f"{MIN_VOCAB_SIZE}.")
  if config.d_model % config.num_heads:
    raise UsageError(f"--d-model ({config.d_model}) must be divisible by --heads "
                     f"({config.num_heads}).")
  if config.seq_len < 2:
    raise UsageError("--seq-len must be at least 2.")
  if config.emo_mode not in (1, 2):
    raise UsageError(f"--emo-mode must be 1 or 2 (got {config.emo_mode}).")
  if not 0.0 <= config.tailr_gamma <= 1.0:
    raise UsageError(f"--tailr-gamma must lie in [0, 1] (got {config.tailr_gamma}).")
  if not 0.0 <= config.tailr_min_weight <= 1.0:
    raise UsageError(f"--tailr-min-weight must lie in [0, 1] (got {config.tailr_min_weight}).")
  for flag, path in (("--pretrain-corpus", config.pretrain_corpus),
                     ("--finetune-corpus", config.finetune_corpus)):
    if path is not None:
      check_readable_corpus(path, flag)
  return config


# ----------------------------------------------------------------------------------------------
# Text


def check_readable_corpus(path: str, flag: str) -> None:
  """Raises UsageError unless ``path`` is a readable text file or a folder holding some."""
  if not os.path.exists(path):
    raise UsageError(f"{flag} {path!r}: no such file or folder.")
  if os.path.isdir(path):
    if not os.access(path, os.R_OK | os.X_OK):
      raise UsageError(f"{flag} {path!r}: the folder is not readable.")
    if not _text_files(path):
      raise UsageError(f"{flag} {path!r}: the folder holds no readable text file "
                       f"({', '.join(TEXT_SUFFIXES)}).")
    return
  if not os.access(path, os.R_OK):
    raise UsageError(f"{flag} {path!r}: the file is not readable.")
  try:
    with open(path, "rb") as f:
      head = f.read(4096)
  except OSError as error:
    raise UsageError(f"{flag} {path!r}: cannot read the file ({error}).") from None
  if b"\x00" in head:
    raise UsageError(f"{flag} {path!r}: looks like a binary file, not text.")
  if not head.strip():
    raise UsageError(f"{flag} {path!r}: the file is empty.")


def _text_files(folder: str, excluded: frozenset[str] = frozenset()) -> list[str]:
  """Readable text files under ``folder`` (sorted relative walk, ``excluded`` folders pruned)."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if d not in excluded and not d.startswith("."))
    for name in sorted(files):
      path = os.path.join(root, name)
      if name.endswith(TEXT_SUFFIXES) and os.access(path, os.R_OK):
        found.append(path)
  return found


def _read_text(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def load_documents(path: str | None, domain: str) -> tuple[list[str], str]:
  """Documents of a corpus and a one-line description of their source.

  ``path=None`` selects the built-in corpus of the domain: the stdlib source for
  ``"pretrain"``, the reference-manual topics (sorted by name) for ``"finetune"``.
  """
  if path is None and domain == "pretrain":
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [f for f in _text_files(stdlib, STDLIB_EXCLUDED_DIRS) if f.endswith(".py")]
    files = [f for f in files if not os.path.basename(f).startswith("test_")]
    order = np.random.default_rng(0).permutation(len(files))  # fixed: the data, not the seed
    return ([_read_text(files[i]) for i in order],
            (f"Python {platform.python_version()} standard library source, {stdlib} "
            f"({len(files)} .py files; tests, site-packages, pydoc_data excluded; PSF licence)"))
  if path is None:
    from pydoc_data import topics  # pylint: disable=import-outside-toplevel
    names = sorted(topics.topics)
    return ([topics.topics[n] for n in names],
            (f"Python {platform.python_version()} reference manual, pydoc_data.topics.topics "
            f"({len(names)} topics, {topics.__file__}; PSF licence)"))
  files = [path] if os.path.isfile(path) else _text_files(path)
  return [_read_text(f) for f in files], f"{path} ({len(files)} file(s))"


class Split(NamedTuple):
  train: list[str]
  val: list[str]


def split_by_budget(documents: Sequence[str], val_chars: int, train_chars: int) -> Split:
  """The first documents (about ``val_chars``) for validation, the next ones for training."""
  val, train, taken = [], [], 0
  for doc in documents:
    if taken < val_chars:
      val.append(doc)
      taken += len(doc)
    elif sum(map(len, train)) < train_chars:
      train.append(doc)
    else:
      break
  return _ensure_both(Split(train, val))


def split_every(documents: Sequence[str], every: int) -> Split:
  """Every ``every``-th document (offset ``every // 2``) held out for validation."""
  val = [d for i, d in enumerate(documents) if i % every == every // 2]
  train = [d for i, d in enumerate(documents) if i % every != every // 2]
  return _ensure_both(Split(train, val))


def _ensure_both(split: Split) -> Split:
  """With too few documents for a split by document, cut every document at 90 %."""
  if split.train and split.val:
    return split
  docs = split.train + split.val
  cut = [max(1, int(0.9 * len(d))) for d in docs]
  return Split([d[:c] for d, c in zip(docs, cut)], [d[c:] for d, c in zip(docs, cut)])


def train_tokenizer(texts: Sequence[str], vocab_size: int):
  """A byte-level BPE with ``vocab_size`` tokens learned from ``texts`` (``<|endoftext|>`` = 0)."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  byte_level = tokenizers.pre_tokenizers.ByteLevel
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = byte_level(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL_TOKEN],
      initial_alphabet=byte_level.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  return tokenizer


def encode_stream(tokenizer, documents: Sequence[str]) -> np.ndarray:
  """All documents as one int32 token stream, each followed by ``<|endoftext|>``."""
  eos = tokenizer.token_to_id(SPECIAL_TOKEN)
  ids: list[int] = []
  for encoding in tokenizer.encode_batch(list(documents)):
    ids.extend(encoding.ids)
    ids.append(eos)
  return np.asarray(ids, np.int32)


class Data(NamedTuple):
  pretrain_train: np.ndarray
  pretrain_val: np.ndarray
  finetune_train: np.ndarray
  finetune_val: np.ndarray
  vocab_size: int
  description: dict


def prepare_data(config: Config, out_dir: str, log) -> Data:
  """Corpus, tokenizer and token streams (cached as ``tokenizer.json`` and ``data.npz``)."""
  cache = os.path.join(out_dir, "data.npz")
  tokenizer_path = os.path.join(out_dir, "tokenizer.json")
  if os.path.exists(cache) and os.path.exists(tokenizer_path):
    with np.load(cache) as stored:
      arrays = {k: stored[k] for k in stored.files}
    description = json.loads(str(arrays.pop("description")))
    return Data(**arrays, vocab_size=description["vocab_size"], description=description)

  pre_docs, pre_source = load_documents(config.pretrain_corpus, "pretrain")
  fine_docs, fine_source = load_documents(config.finetune_corpus, "finetune")
  pretrain = split_by_budget(pre_docs, config.pretrain_val_chars, config.pretrain_chars)
  finetune = split_every(fine_docs, config.finetune_val_every)
  log(f"pretraining text: {sum(map(len, pretrain.train)):,} chars train, "
      f"{sum(map(len, pretrain.val)):,} val; fine-tuning text: "
      f"{sum(map(len, finetune.train)):,} train, {sum(map(len, finetune.val)):,} val")
  # The tokenizer of a pretrained LM is fixed before any fine-tuning: learn it on the pretraining
  # training text only.
  tokenizer = train_tokenizer(pretrain.train, config.vocab_size)
  learned = tokenizer.get_vocab_size()
  if learned < config.vocab_size:
    raise UsageError(
        f"the tokenizer learned only {learned} tokens from the pretraining text, fewer than "
        f"--vocab-size {config.vocab_size} that the model is built for; lower --vocab-size or "
        f"give more text (--pretrain-corpus, --pretrain-chars).")
  streams = {
      "pretrain_train": encode_stream(tokenizer, pretrain.train),
      "pretrain_val": encode_stream(tokenizer, pretrain.val),
      "finetune_train": encode_stream(tokenizer, finetune.train),
      "finetune_val": encode_stream(tokenizer, finetune.val),
  }
  for name, stream in streams.items():
    if stream.size < config.seq_len + 1:
      raise UsageError(f"the {name.replace('_', ' ')} text gives {stream.size} tokens, fewer "
                       f"than one sequence of --seq-len {config.seq_len} + 1; give more text.")
  description = {
      "pretrain_source": pre_source,
      "finetune_source": fine_source,
      "tokenizer": "byte-level BPE (tokenizers), trained on the pretraining train split",
      "vocab_size": learned,
      "chars": {"pretrain_train": sum(map(len, pretrain.train)),
                "pretrain_val": sum(map(len, pretrain.val)),
                "finetune_train": sum(map(len, finetune.train)),
                "finetune_val": sum(map(len, finetune.val))},
      "documents": {"pretrain_train": len(pretrain.train), "pretrain_val": len(pretrain.val),
                    "finetune_train": len(finetune.train), "finetune_val": len(finetune.val)},
      "tokens": {k: int(v.size) for k, v in streams.items()},
  }
  os.makedirs(out_dir, exist_ok=True)
  tokenizer.save(tokenizer_path)
  _atomic_savez(cache, description=np.asarray(json.dumps(description)), **streams)
  return Data(**streams, vocab_size=learned, description=description)


# ----------------------------------------------------------------------------------------------
# Model (imports of JAX and Flax are deferred so that argument errors come before them)


def _jax():
  import jax  # pylint: disable=import-outside-toplevel
  return jax


def build_model(config: Config, seed: int):
  """A pre-LayerNorm decoder-only transformer with tied input/output embeddings (Flax NNX),
  initialised from ``seed``."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return _transformer_class()(config.vocab_size, config.seq_len, config.d_model,
                              config.num_layers, config.num_heads, nnx.Rngs(seed))


@functools.cache
def _transformer_class():
  """The model classes, defined once (JAX and Flax are imported only when a model is built, so
  that argument errors come first; one class object keeps the compiled steps reusable)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  init = nnx.initializers.normal(0.02)
  module_list = getattr(nnx, "List", list)  # flax >= 0.12 wants nnx.List; older ones a list

  class Block(nnx.Module):
    """Causal self-attention and an MLP, each behind a LayerNorm and a residual connection."""

    def __init__(self, d_model: int, num_heads: int, num_layers: int, rngs: nnx.Rngs):
      residual_init = nnx.initializers.normal(0.02 / math.sqrt(2 * num_layers))
      self.num_heads = num_heads
      self.attn_norm = nnx.LayerNorm(d_model, rngs=rngs)
      self.qkv = nnx.Linear(d_model, 3 * d_model, kernel_init=init, rngs=rngs)
      self.attn_out = nnx.Linear(d_model, d_model, kernel_init=residual_init, rngs=rngs)
      self.mlp_norm = nnx.LayerNorm(d_model, rngs=rngs)
      self.mlp_in = nnx.Linear(d_model, 4 * d_model, kernel_init=init, rngs=rngs)
      self.mlp_out = nnx.Linear(4 * d_model, d_model, kernel_init=residual_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      batch, length, d = x.shape
      heads = self.num_heads
      qkv = self.qkv(self.attn_norm(x)).reshape(batch, length, 3, heads, d // heads)
      attended = jax.nn.dot_product_attention(
          qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
      x = x + self.attn_out(attended.reshape(batch, length, d))
      return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))

  class TransformerLM(nnx.Module):
    """``hidden_states(tokens) [B, T, d]``; ``head`` is the ``[V, d]`` tied embedding, so the
    logits are ``hidden_states @ head.T``."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int, num_layers: int,
                 num_heads: int, rngs: nnx.Rngs):
      self.embed = nnx.Embed(vocab_size, d_model, embedding_init=init, rngs=rngs)
      self.position = nnx.Param(init(rngs.params(), (seq_len, d_model)))
      self.blocks = module_list([Block(d_model, num_heads, num_layers, rngs)
                              for _ in range(num_layers)])
      self.final_norm = nnx.LayerNorm(d_model, rngs=rngs)

    @property
    def head(self) -> jax.Array:
      return self.embed.embedding[...]

    def hidden_states(self, tokens: jax.Array) -> jax.Array:
      x = self.embed(tokens) + self.position[...][: tokens.shape[1]]
      for block in self.blocks:
        x = block(x)
      return self.final_norm(x)

    def __call__(self, tokens: jax.Array) -> jax.Array:
      return jnp.einsum("btd,vd->btv", self.hidden_states(tokens), self.head)

  return TransformerLM


# ----------------------------------------------------------------------------------------------
# Losses: the one place that chooses between the fused and the plain path


class LossSettings(NamedTuple):
  """Static (hashable) settings of the objectives; the objective itself is a traced index."""
  fused: bool
  emo_mode: int = 1
  tailr_gamma: float = 0.8
  tailr_min_weight: float = 0.0
  chunk_size: int = 1024


def fused_available() -> bool:
  import emoloss  # pylint: disable=import-outside-toplevel
  return hasattr(emoloss, "fused_ce_emo")


def token_losses(hidden, head, targets, cost_embeddings, objective: str,
                 settings: LossSettings):
  """Per-token training loss and negative log-likelihood ``[B, T]`` of one objective.

  ``hidden [B, T, d]`` and ``head [V, d]`` give the logits ``hidden @ head.T``; ``targets`` are
  the next tokens (already shifted); ``cost_embeddings [V, d]`` is the frozen EMO cost.

  Fused path (``emoloss.fused_ce_emo``): per-token nll and EMO without the ``[N, V]`` logits;
  CE = nll, EMO+CE = ``emoloss.emo_ce_combination(nll, emo)``, TaiLr =
  ``emoloss.tailr_weight(-nll) * nll``. Plain path: logits, then ``optax`` cross-entropy,
  ``emoloss.emo_loss`` / ``emo_ce_combination`` and ``emoloss.tailr_loss``.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  import emoloss  # pylint: disable=import-outside-toplevel

  if settings.fused:
    out = emoloss.fused_ce_emo(hidden, head, targets,
                               cost_embeddings if objective == "emo" else None,
                               chunk_size=settings.chunk_size)
    nll = out.nll
    if objective == "ce":
      loss = nll
    elif objective == "emo":
      loss = emoloss.emo_ce_combination(nll, out.emo, mode=settings.emo_mode)
    else:
      weight = emoloss.tailr_weight(-nll, settings.tailr_gamma, settings.tailr_min_weight)
      loss = weight * nll
    return loss, nll

  logits = jnp.einsum("btd,vd->btv", hidden, head)
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, targets)
  if objective == "ce":
    loss = nll
  elif objective == "emo":
    emo = emoloss.emo_loss(logits, targets, cost_embeddings)
    loss = emoloss.emo_ce_combination(nll, emo, mode=settings.emo_mode)
  else:
    loss = emoloss.tailr_loss(logits, targets, gamma=settings.tailr_gamma,
                              min_weight=settings.tailr_min_weight)
  return loss, nll


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def scale_by_learning_rate_argument():
  """``u ↦ -learning_rate · u`` with ``learning_rate`` passed to ``update`` (a traced scalar).

  The schedule then lives outside the compiled step, so pretraining and every fine-tuning run
  share one compiled program.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  def update_fn(updates, state, params=None, *, learning_rate, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u: -learning_rate * u, updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@functools.cache
def adamw_with_lr_argument(weight_decay: float):
  """Global-norm clipping at 1, then AdamW (``scale_by_adam``, decoupled weight decay) with the
  learning rate given at each step. One object per ``weight_decay`` (part of the static graph)."""
  import optax  # pylint: disable=import-outside-toplevel
  return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                     optax.add_decayed_weights(weight_decay), scale_by_learning_rate_argument())


def learning_rate_schedule(peak_lr: float, steps: int, config: Config):
  """Linear warmup to ``peak_lr``, cosine decay to 10 % of it at ``steps``."""
  import optax  # pylint: disable=import-outside-toplevel
  warmup = min(config.warmup_steps, max(1, steps // 5))
  return optax.warmup_cosine_decay_schedule(
      0.0, peak_lr, warmup, max(steps, warmup + 1), end_value=0.1 * peak_lr)


def make_optimizer(model, config: Config):
  """``nnx.Optimizer`` over the parameters with :func:`adamw_with_lr_argument`."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return nnx.Optimizer(model, adamw_with_lr_argument(config.weight_decay), wrt=nnx.Param)


@functools.cache
def _compiled_steps():
  """The jitted train and evaluation steps (graph definition and loss settings static, the
  objective an index into OBJECTIVES so that one compiled program serves every run)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  import emoloss  # pylint: disable=import-outside-toplevel

  @functools.partial(jax.jit, static_argnums=(0, 6), donate_argnums=(1,))
  def train_step(graphdef, state, tokens, cost_embeddings, objective_index, learning_rate,
                 settings: LossSettings):
    model, optimizer = nnx.merge(graphdef, state)
    branches = [functools.partial(token_losses, objective=name, settings=settings)
                for name in OBJECTIVES]

    def loss_fn(model):
      hidden = model.hidden_states(tokens[:, :-1])
      loss, nll = jax.lax.switch(objective_index, branches, hidden, model.head, tokens[:, 1:],
                                 cost_embeddings)
      return jnp.mean(loss), jnp.mean(nll)

    (loss, nll), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, learning_rate=learning_rate)
    return nnx.state((model, optimizer)), loss, nll

  @functools.partial(jax.jit, static_argnums=(0,))
  def eval_step(graphdef, model_state, tokens, cost_embeddings):
    model = nnx.merge(graphdef, model_state)
    logits = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    emo = emoloss.emo_loss(logits, targets, cost_embeddings)
    return jnp.sum(nll), jnp.sum(correct), jnp.sum(emo)

  return train_step, eval_step


def eval_windows(stream: np.ndarray, seq_len: int, max_tokens: int, batch_size: int
                 ) -> np.ndarray:
  """Non-overlapping ``[n, seq_len + 1]`` windows spread evenly over a held-out stream (so that
  every held-out document counts even when ``max_tokens`` covers only part of it); ``n`` is a
  multiple of ``batch_size`` when there are that many (one compiled evaluation shape)."""
  count = max(1, min((stream.size - 1) // seq_len, max(1, max_tokens // seq_len)))
  if count >= batch_size:
    count -= count % batch_size
  # Spacing >= seq_len because count * seq_len <= stream.size - 1.
  starts = np.linspace(0, stream.size - seq_len - 1, count).astype(np.int64)
  return np.stack([stream[s:s + seq_len + 1] for s in starts])


def evaluate(model, windows: np.ndarray, cost_embeddings, batch_size: int) -> dict:
  """Perplexity, next-token accuracy and mean EMO cost (under ``cost_embeddings``; left out
  when it is None) of ``model`` on the ``[n, T + 1]`` windows, ``batch_size`` at a time."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  _, eval_step = _compiled_steps()
  graphdef, model_state = nnx.split(model)
  with_emo = cost_embeddings is not None
  if not with_emo:  # same compiled program, result dropped
    cost_embeddings = np.zeros(model.head.shape, np.float32)
  totals = np.zeros(3)
  for start in range(0, len(windows), batch_size):
    totals += np.asarray(eval_step(graphdef, model_state, windows[start:start + batch_size],
                                   cost_embeddings))
  tokens = windows.shape[0] * (windows.shape[1] - 1)
  nll, correct, emo = totals / tokens
  metrics = {"perplexity": float(math.exp(nll)), "nll": float(nll), "accuracy": float(correct)}
  if with_emo:
    metrics["emo_cost"] = float(emo)
  return metrics


def batch_at(stream: np.ndarray, step: int, config: Config, phase: str) -> np.ndarray:
  """The ``[batch, seq_len + 1]`` windows of ``step``: a function of (seed, phase, step) only,
  so every objective sees the same batches and a resumed run continues the same order."""
  phase_id = {"pretrain": 0, "finetune": 1}[phase]
  rng = np.random.default_rng([config.seed, phase_id, step])
  starts = rng.integers(0, stream.size - config.seq_len, size=config.batch_size)
  return np.stack([stream[s:s + config.seq_len + 1] for s in starts])


# ----------------------------------------------------------------------------------------------
# Checkpoints: a plain .npz of the flattened nnx state plus a JSON blob


def _atomic_savez(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def save_checkpoint(path: str, state, meta: dict) -> None:
  """``state`` (any nnx state pytree) flattened by key path, with ``meta`` as JSON."""
  jax = _jax()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  arrays = {f"state{jax.tree_util.keystr(key)}": np.asarray(leaf) for key, leaf in leaves}
  _atomic_savez(path, __meta__=np.asarray(json.dumps(meta)), **arrays)


def load_checkpoint(path: str, template) -> tuple[Any, dict]:
  """The state saved at ``path``, in the structure of ``template``, and its ``meta``."""
  jax = _jax()
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  with np.load(path) as stored:
    restored = []
    for key, leaf in leaves:
      name = f"state{jax.tree_util.keystr(key)}"
      if name not in stored.files or stored[name].shape != np.shape(leaf):
        raise UsageError(f"checkpoint {path} does not match the model ({name}); rerun with "
                         f"--overwrite or another --out.")
      restored.append(jax.numpy.asarray(stored[name], dtype=np.asarray(leaf).dtype))
    meta = json.loads(str(stored["__meta__"]))
  return jax.tree_util.tree_unflatten(treedef, restored), meta


class Phase(NamedTuple):
  name: str              # checkpoint name: pretrain, finetune_ce, ...
  objective: str         # one of OBJECTIVES
  stream: np.ndarray     # training tokens
  steps: int
  lr: float
  kind: str              # pretrain | finetune (selects the batch order)


def run_phase(phase: Phase, config: Config, settings: LossSettings, out_dir: str, init_state,
              cost_embeddings, eval_sets: dict, progress: bool, log) -> tuple[Any, dict]:
  """Trains one phase (resuming from its checkpoint) and returns its model state and record.

  The record holds the validation curves (metric per evaluation step on each of ``eval_sets``,
  a dict name -> (windows, cost embeddings)) and the training-loss trace.
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  path = os.path.join(out_dir, f"{phase.name}.npz")
  model = build_model(config, config.seed)
  nnx.update(model, _jax().tree.map(lambda x: x.copy(), init_state))  # the step donates it
  optimizer = make_optimizer(model, config)
  schedule = learning_rate_schedule(phase.lr, phase.steps, config)
  objective_index = np.int32(OBJECTIVES.index(phase.objective))
  graphdef, state = nnx.split((model, optimizer))
  record = {"steps": [], "train_loss": [], "train_nll": [], "curves": {}, "seconds": 0.0}
  step = 0
  if os.path.exists(path):
    state, record = load_checkpoint(path, state)
    step = record["step"]
    if record.get("done"):
      log(f"{phase.name}: finished earlier, loaded from {path}")
      model, _ = nnx.merge(graphdef, state)
      return nnx.state(model), record
    log(f"{phase.name}: resuming from step {step} ({path})")

  train_step, _ = _compiled_steps()
  cost = cost_embeddings if cost_embeddings is not None else np.zeros(
      (config.vocab_size, config.d_model), np.float32)
  checkpoint_every = max(config.eval_every, phase.steps // 4)

  def evaluate_now(at_step: int) -> None:
    model, _ = nnx.merge(graphdef, state)
    for name, (windows, eval_cost) in eval_sets.items():
      metrics = evaluate(model, windows, eval_cost, config.batch_size)
      curve = record["curves"].setdefault(name, {"step": []})
      curve["step"].append(at_step)
      for metric, value in metrics.items():
        curve.setdefault(metric, []).append(value)

  def save(done: bool) -> None:
    save_checkpoint(path, state, dict(record, step=step, done=done))

  if step == 0:
    evaluate_now(0)
  started = time.perf_counter() - record["seconds"]
  bar = tqdm(total=phase.steps, initial=step, desc=phase.name, disable=not progress,
             dynamic_ncols=True, leave=True)
  window: list = []
  while step < phase.steps:
    tokens = batch_at(phase.stream, step, config, phase.kind)
    state, loss, nll = train_step(graphdef, state, tokens, cost, objective_index,
                                  np.float32(schedule(step)), settings)
    step += 1
    window.append((loss, nll))
    if step % 10 == 0 or step == phase.steps:
      values = np.asarray(window, np.float64)  # waits for the device; once per 10 steps
      if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"{phase.name}: non-finite loss at step {step}; lower the "
                                 f"learning rate.")
      record["steps"].append(step)
      record["train_loss"].append(float(values[:, 0].mean()))
      record["train_nll"].append(float(values[:, 1].mean()))
      window = []
      bar.set_postfix(loss=f"{record['train_loss'][-1]:.3f}",
                      ppl=f"{math.exp(record['train_nll'][-1]):.1f}", refresh=False)
      bar.update(step - bar.n)
    if step % config.eval_every == 0 or step == phase.steps:
      evaluate_now(step)
      first = next(iter(eval_sets))
      bar.set_postfix(loss=f"{record['train_loss'][-1]:.3f}",
                      val_ppl=f"{record['curves'][first]['perplexity'][-1]:.1f}")
    record["seconds"] = time.perf_counter() - started
    if step % checkpoint_every == 0 and step < phase.steps:
      save(done=False)
  bar.close()
  record["seconds"] = time.perf_counter() - started
  save(done=True)
  model, _ = nnx.merge(graphdef, state)
  return nnx.state(model), record


# ----------------------------------------------------------------------------------------------
# Report


def format_table(rows: list[dict]) -> str:
  """A Markdown table of the final metrics."""
  header = ("| model | ppl (docs, held out) | accuracy (docs) | EMO cost (docs) | "
            "ppl (code, held out) |\n|---|---:|---:|---:|---:|")
  lines = [header]
  for row in rows:
    lines.append(f"| {row['model']} | {row['finetune_val']['perplexity']:.2f} | "
                 f"{row['finetune_val']['accuracy']:.4f} | {row['finetune_val']['emo_cost']:.4f} "
                 f"| {row['pretrain_val']['perplexity']:.2f} |")
  return "\n".join(lines)


def plot_curves(path: str, pretrain_record: dict, finetune_records: dict, baseline: dict,
                title: str) -> None:
  """Validation curves of every run on one figure (2 x 2 panels)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  ax = axes[0, 0]
  for name, label in (("pretrain_val", "code (pretraining domain)"),
                      ("finetune_val", "docs (fine-tuning domain)")):
    curve = pretrain_record["curves"][name]
    ax.plot(curve["step"], curve["perplexity"], label=label)
  ax.set(title="pretraining (CE): held-out perplexity", xlabel="step", ylabel="perplexity",
         yscale="log")
  ax.legend()
  panels = ((axes[0, 1], "perplexity", "fine-tuning: held-out docs perplexity", True),
            (axes[1, 0], "accuracy", "fine-tuning: held-out docs next-token accuracy", False),
            (axes[1, 1], "emo_cost", "held-out docs EMO cost (expected embedding distance)",
             False))
  for ax, metric, panel_title, log_scale in panels:
    for name, record in finetune_records.items():
      curve = record["curves"]["finetune_val"]
      ax.plot(curve["step"], curve[metric], label=OBJECTIVE_LABELS[name], marker=".")
    ax.axhline(baseline[metric], color="gray", linestyle="--", label="pretrained")
    ax.set(title=panel_title, xlabel="fine-tuning step", ylabel=metric)
    if log_scale:
      ax.set_yscale("log")
    ax.legend()
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def cpu_model() -> str:
  """The CPU's model name as ``lscpu`` prints it (from /proc/cpuinfo), or platform's guess."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_description() -> dict:
  """Where the numbers come from: CPU, core count, JAX backend and library versions."""
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"platform": platform.platform(), "cpu_model": cpu_model(),
          "cpu_cores": cores, "jax_backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


# ----------------------------------------------------------------------------------------------
# Main


_PER_RUN_FIELDS = ("objectives", "loss_path", "eval_every", "eval_tokens", "emo_mode",
                   "tailr_gamma", "tailr_min_weight", "chunk_size")


def finetune_name(objective: str, config: Config) -> str:
  """Checkpoint name of a fine-tuning run: the objective and its own settings."""
  if objective == "emo":
    return f"finetune_emo_mode{config.emo_mode}"
  if objective == "tailr":
    return f"finetune_tailr_gamma{config.tailr_gamma:g}_minw{config.tailr_min_weight:g}"
  return f"finetune_{objective}"


def _prepare_out_dir(out_dir: str, config: Config, overwrite: bool) -> None:
  """Creates ``out_dir``; refuses (or, with overwrite, clears) checkpoints of another config."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as error:
    raise UsageError(f"--out {out_dir!r}: cannot create the folder ({error}).") from None
  config_path = os.path.join(out_dir, "config.json")
  wanted = dataclasses.asdict(config)
  wanted["objectives"] = list(wanted["objectives"])
  # What every checkpoint depends on. The objectives' own settings name their checkpoint files
  # instead (see finetune_name), so another TaiLr gamma reuses the pretrained model.
  keyed = {k: v for k, v in wanted.items() if k not in _PER_RUN_FIELDS}
  if os.path.exists(config_path):
    with open(config_path) as f:
      stored = json.load(f)
    stored_keyed = {k: v for k, v in stored.items() if k in keyed}
    holds_data = any(name.endswith(".npz") for name in os.listdir(out_dir))
    if stored_keyed != keyed and holds_data:
      if not overwrite:
        changed = sorted(k for k in keyed if stored_keyed.get(k) != keyed[k])
        raise UsageError(f"{out_dir} holds checkpoints of other settings ({', '.join(changed)}); "
                         f"use another --out or --overwrite to discard them.")
      for name in os.listdir(out_dir):
        if name.endswith((".npz", ".json")):
          os.remove(os.path.join(out_dir, name))
  with open(config_path, "w") as f:
    json.dump(wanted, f, indent=1)


def run(config: Config, out_dir: str, json_path: str, plot_path: str, overwrite: bool = False,
        progress: bool = True, log=print, command: str | None = None) -> dict:
  """The whole experiment; returns (and writes to ``json_path``, its table to the ``.md`` next
  to it, its curves to ``plot_path``) the results."""
  started = time.perf_counter()
  _prepare_out_dir(out_dir, config, overwrite)
  data = prepare_data(config, out_dir, log)
  config = dataclasses.replace(config, vocab_size=data.vocab_size)

  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  use_fused = {"auto": fused_available(), "fused": True, "plain": False}[config.loss_path]
  if use_fused and not fused_available():
    raise UsageError("--loss-path fused: this emoloss has no fused_ce_emo; use --loss-path "
                     "plain or auto.")

  settings = LossSettings(use_fused, config.emo_mode, config.tailr_gamma,
                          config.tailr_min_weight, config.chunk_size)

  pretrain_windows = eval_windows(data.pretrain_val, config.seq_len, config.eval_tokens,
                                  config.batch_size)
  finetune_windows = eval_windows(data.finetune_val, config.seq_len, config.eval_tokens,
                                  config.batch_size)
  initial = nnx.state(build_model(config, config.seed))
  log(f"model: {sum(x.size for x in jax_leaves(initial)):,} parameters; loss path: "
      f"{'fused (emoloss.fused_ce_emo)' if use_fused else 'plain (logits + emoloss losses)'}")

  pretrain = Phase("pretrain", "ce", data.pretrain_train, config.pretrain_steps,
                   config.pretrain_lr, "pretrain")
  pretrained_state, pretrain_record = run_phase(
      pretrain, config, settings, out_dir, initial, None,
      {"pretrain_val": (pretrain_windows, None), "finetune_val": (finetune_windows, None)},
      progress, log)
  # The frozen EMO cost embedding: a copy of the pretrained LM head (the tied embedding).
  pretrained_model = build_model(config, config.seed)
  nnx.update(pretrained_model, pretrained_state)
  cost_embeddings = jnp.array(pretrained_model.head, copy=True)
  eval_sets = {"finetune_val": (finetune_windows, cost_embeddings),
               "pretrain_val": (pretrain_windows, cost_embeddings)}
  rows = [{"model": "pretrained (no fine-tuning)", "objective": None,
           **{name: evaluate(pretrained_model, w, c, config.batch_size)
              for name, (w, c) in eval_sets.items()}}]

  finetune_records = {}
  for name in config.objectives:
    phase = Phase(finetune_name(name, config), name, data.finetune_train,
                  config.finetune_steps, config.finetune_lr, "finetune")
    _, record = run_phase(phase, config, settings, out_dir, pretrained_state, cost_embeddings,
                              eval_sets, progress, log)
    finetune_records[name] = record
    rows.append({"model": f"fine-tuned, {OBJECTIVE_LABELS[name]}", "objective": name,
                 **{k: {m: v[-1] for m, v in curve.items() if m != "step"}
                    for k, curve in record["curves"].items()}})

  wall = time.perf_counter() - started
  table = format_table(rows)
  machine = machine_description()
  phase_seconds = {"pretrain": pretrain_record["seconds"],
                   **{f"finetune_{k}": r["seconds"] for k, r in finetune_records.items()}}
  results = {
      "command": command,
      "config": dict(dataclasses.asdict(config), objectives=list(config.objectives)),
      "loss_path": "fused" if use_fused else "plain",
      "data": data.description,
      "machine": machine,
      "wall_seconds_this_invocation": wall,
      "phase_seconds": phase_seconds,
      "results": rows,
      "table_markdown": table,
      "curves": {"pretrain": pretrain_record["curves"],
                 **{k: r["curves"] for k, r in finetune_records.items()}},
      "train_loss": {"pretrain": {"step": pretrain_record["steps"],
                                  "loss": pretrain_record["train_loss"]},
                     **{k: {"step": r["steps"], "loss": r["train_loss"], "nll": r["train_nll"]}
                        for k, r in finetune_records.items()}},
  }
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  pretrain_text = "stdlib code" if config.pretrain_corpus is None else "the pretraining corpus"
  finetune_text = ("the reference manual" if config.finetune_corpus is None
                   else "the fine-tuning corpus")
  plot_curves(plot_path, pretrain_record, finetune_records, rows[0]["finetune_val"],
              f"{config.num_layers}-layer d={config.d_model} transformer, vocab "
              f"{config.vocab_size}, seq {config.seq_len}, batch {config.batch_size}: "
              f"pretrain {config.pretrain_steps} steps on {pretrain_text}, fine-tune "
              f"{config.finetune_steps} steps on {finetune_text}")
  markdown_path = os.path.splitext(json_path)[0] + ".md"
  with open(markdown_path, "w") as f:
    f.write(format_report(results, os.path.basename(plot_path)))
  log("\n" + table)
  log(f"\nwall time {wall:.0f} s (this invocation; training phases "
      f"{sum(phase_seconds.values()):.0f} s) on {machine['cpu_cores']} core(s) of "
      f"{machine['cpu_model']} ({machine['jax_backend']})\nresults: {json_path}, "
      f"{markdown_path}; plot: {plot_path}")
  return results


def format_report(results: dict, plot_name: str) -> str:
  """The Markdown file written next to the JSON: command, table, plot, data and machine."""
  machine, config = results["machine"], results["config"]
  phases = results["phase_seconds"]
  lines = [
      "# LM fine-tuning: CE vs EMO+CE vs TaiLr",
      "",
      f"Command: `{results['command'] or 'run() from Python'}`",
      "",
      results["table_markdown"],
      "",
      ("Held out: every 8th topic of the fine-tuning text (docs) and the first documents of the "
      "pretraining text (code). EMO cost: expected embedding distance `1 - cos` of the "
      "prediction under the pretrained LM head."),
      "",
      f"![validation curves]({plot_name})",
      "",
      f"- pretraining text: {results['data']['pretrain_source']}",
      f"- fine-tuning text: {results['data']['finetune_source']}",
      (f"- model: {config['num_layers']} layers, d={config['d_model']}, {config['num_heads']} "
      f"heads, vocabulary {config['vocab_size']} (byte-level BPE), sequence {config['seq_len']}, "
      f"batch {config['batch_size']}; pretraining {config['pretrain_steps']} steps, fine-tuning "
      f"{config['finetune_steps']} steps per objective; loss path {results['loss_path']}"),
      (f"- machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, JAX {machine['jax']} "
      f"({machine['jax_backend']}), Flax {machine['flax']}, Python {machine['python']}"),
      f"- wall time: {results['wall_seconds_this_invocation']:.0f} s for this invocation; "
      "training phases " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()),
      "",
  ]
  return "\n".join(lines)


def jax_leaves(tree) -> list:
  return _jax().tree_util.tree_leaves(tree)


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
                    else os.path.join(REPO_ROOT, "benchmarks", "results", "lm_finetune.json"))
    json_path = args.json or default_json
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    for path in (json_path, plot_path):
      folder = os.path.dirname(os.path.abspath(path))
      try:
        os.makedirs(folder, exist_ok=True)
      except OSError as error:
        raise UsageError(f"cannot create {folder!r} for {path!r} ({error}).") from None
    return run(config, out_dir, json_path, plot_path, overwrite=args.overwrite,
               progress=not args.no_progress,
               command=" ".join(["python", "benchmarks/lm_finetune.py", *argv]))
  except UsageError as error:
    parser.error(str(error))
  raise AssertionError("unreachable")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
