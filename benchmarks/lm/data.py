"""Text already on the machine, a tokenizer learned from it, and token windows.

Default corpora (both ship with CPython, PSF licence; see ``/work/shared/DATA.md``):

* pretraining domain, code: the standard library's own ``.py`` sources (tests, site-packages,
  pydoc_data and a few non-library folders left out), in a fixed shuffled order;
* regime A (in-domain adaptation): standard-library files held out from pretraining by file
  (the files after the pretraining ones in the same fixed order), split by file into
  validation, test and fine-tuning text;
* regime B (domain shift), prose: Python's reference manual as ``pydoc_data.topics.topics``, one
  document per topic, sorted by name; every ``held_out_every``-th topic is held out, and the
  held-out topics alternate between a validation split (checkpoint choice) and a test split
  (every reported number).

A byte-level BPE (``tokenizers``) is learned on the pretraining training text only, as a
pretrained LM's tokenizer is fixed before any fine-tuning. Token streams are cached as ``.npz``.
"""

from __future__ import annotations

import json
import os
import platform
import sysconfig
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from benchmarks import outputs
from benchmarks.lm.config import Config, UsageError

SPECIAL_TOKEN = "<|endoftext|>"
# A byte-level BPE needs its 256 byte tokens and the document separator before any merge.
MIN_VOCAB_SIZE = 257 + 43
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
STDLIB_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__",
    "lib-dynload", "lib2to3", "turtledemo", "ensurepip",
})
STREAMS = ("pretrain_train", "pretrain_val", "finetune_train", "finetune_val", "finetune_test",
           "adapt_train", "adapt_val", "adapt_test")


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




def load_documents(path: str | None, domain: str) -> tuple[list[str], str]:
  """Documents of a corpus and a one-line description of their source (no filesystem path).

  ``path=None`` selects the built-in corpus of the domain: the stdlib source for
  ``"pretrain"``, the reference-manual topics (sorted by name) for ``"finetune"``.
  """
  if path is None and domain == "pretrain":
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [f for f in _text_files(stdlib, STDLIB_EXCLUDED_DIRS) if f.endswith(".py")]
    files = [f for f in files if not os.path.basename(f).startswith("test_")]
    order = np.random.default_rng(0).permutation(len(files))  # fixed: the data, not the seed
    return ([_read_text(files[i]) for i in order],
            (f"Python {platform.python_version()} standard library source ({len(files)} .py "
             f"files; tests, site-packages, pydoc_data excluded; PSF licence)"))
  if path is None:
    from pydoc_data import topics  # pylint: disable=import-outside-toplevel
    names = sorted(topics.topics)
    return ([topics.topics[n] for n in names],
            (f"Python {platform.python_version()} reference manual, pydoc_data.topics.topics "
             f"({len(names)} topics; PSF licence)"))
  files = [path] if os.path.isfile(path) else _text_files(path)
  return [_read_text(f) for f in files], f"user corpus ({len(files)} file(s))"


def split_by_budget(documents: Sequence[str], val_chars: int, train_chars: int
                    ) -> tuple[list[str], list[str]]:
  """``(train, val)``: the first documents (about ``val_chars``) held out, the next ones (about
  ``train_chars``) for training."""
  val, train, taken, used = [], [], 0, 0
  for doc in documents:
    if taken < val_chars:
      val.append(doc)
      taken += len(doc)
    elif used < train_chars:
      train.append(doc)
      used += len(doc)
    else:
      break
  if not train or not val:
    raise UsageError("the pretraining corpus is too small to hold out validation text; give "
                     "more text or lower --pretrain-chars.")
  return train, val


def split_held_out_files(documents: Sequence[str], pretraining_used: int, val_chars: int,
                         test_chars: int, train_chars: int
                         ) -> tuple[list[str], list[str], list[str]]:
  """``(train, val, test)`` of whole documents after the first ``pretraining_used`` ones
  (which pretraining took): about ``val_chars``, then ``test_chars``, then ``train_chars``
  characters, in order (no file is in two splits)."""
  rest = list(documents[pretraining_used:])
  parts: list[list[str]] = []
  for budget in (val_chars, test_chars, train_chars):
    part, taken = [], 0
    while rest and taken < budget:
      part.append(rest.pop(0))
      taken += len(part[-1])
    parts.append(part)
  val, test, train = parts
  if not train or not val or not test:
    raise UsageError("the pretraining corpus is too small to hold out files for in-domain "
                     "adaptation; give more text or lower --pretrain-chars.")
  return train, val, test


def split_held_out(documents: Sequence[str], every: int
                   ) -> tuple[list[str], list[str], list[str]]:
  """``(train, val, test)``: every ``every``-th document (offset ``every // 2``) held out, the
  held-out ones alternating validation, test, validation, ..."""
  held = [d for i, d in enumerate(documents) if i % every == every // 2]
  train = [d for i, d in enumerate(documents) if i % every != every // 2]
  val, test = held[0::2], held[1::2]
  if not train or not val or not test:
    raise UsageError(f"the fine-tuning corpus has {len(documents)} document(s); at least "
                     f"{2 * every} are needed for training, validation and test documents.")
  return train, val, test


class Data(NamedTuple):
  """Token streams (``<|endoftext|>`` after each document) and what they are."""
  streams: dict[str, np.ndarray]     # STREAMS -> int32 [n]
  vocab_size: int
  description: dict
  tokenizer: object                  # tokenizers.Tokenizer


def load_tokenizer(path: str):
  import tokenizers  # pylint: disable=import-outside-toplevel
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as error:  # the Rust library raises a bare Exception for a damaged file
    raise ValueError(str(error)) from error


def _load_streams(path: str):
  """``(streams, description)`` of a ``data.npz`` cache, or ``None`` if it lacks a stream."""
  with np.load(path) as stored:
    if not set(STREAMS) <= set(stored.files):
      return None
    return {k: stored[k] for k in STREAMS}, json.loads(str(stored["description"]))


def prepare_data(config: Config, out_dir: str, log=print) -> Data:
  """Corpus, tokenizer and token streams (cached as ``tokenizer.json`` and ``data.npz``)."""
  cache = os.path.join(out_dir, "data.npz")
  tokenizer_path = os.path.join(out_dir, "tokenizer.json")
  if os.path.exists(cache) and os.path.exists(tokenizer_path):
    stored = outputs.load_cached(cache, _load_streams)
    if stored is not None:
      streams, description = stored
      return Data(streams, description["vocab_size"], description,
                  outputs.load_cached(tokenizer_path, load_tokenizer))

  pre_docs, pre_source = load_documents(config.pretrain_corpus, "pretrain")
  fine_docs, fine_source = load_documents(config.finetune_corpus, "finetune")
  pre_train, pre_val = split_by_budget(pre_docs, config.pretrain_val_chars, config.pretrain_chars)
  fine_train, fine_val, fine_test = split_held_out(fine_docs, config.held_out_every)
  adapt_train, adapt_val, adapt_test = split_held_out_files(
      pre_docs, len(pre_train) + len(pre_val), config.adapt_val_chars, config.adapt_test_chars,
      config.adapt_train_chars)
  texts = {"pretrain_train": pre_train, "pretrain_val": pre_val, "finetune_train": fine_train,
           "finetune_val": fine_val, "finetune_test": fine_test, "adapt_train": adapt_train,
           "adapt_val": adapt_val, "adapt_test": adapt_test}
  log("text (chars): " + ", ".join(f"{k} {sum(map(len, v)):,}" for k, v in texts.items()))
  tokenizer = train_tokenizer(pre_train, config.vocab_size)
  learned = tokenizer.get_vocab_size()
  if learned < config.vocab_size:
    raise UsageError(
        f"the tokenizer learned only {learned} tokens from the pretraining text, fewer than "
        f"--vocab-size {config.vocab_size} that the model is built for; lower --vocab-size or "
        f"give more text (--pretrain-corpus, --pretrain-chars).")
  streams = {k: encode_stream(tokenizer, v) for k, v in texts.items()}
  for name, stream in streams.items():
    if stream.size < 2 * config.seq_len + 2:
      raise UsageError(f"the {name.replace('_', ' ')} text gives {stream.size} tokens, fewer "
                       f"than two sequences of --seq-len {config.seq_len} + 1; give more text.")
  description = {
      "pretrain_source": pre_source,
      "finetune_source": fine_source,
      "adapt_source": (f"{len(adapt_train) + len(adapt_val) + len(adapt_test)} files of the "
                       "pretraining corpus held out from pretraining (split by file)"),
      "tokenizer": "byte-level BPE (tokenizers), trained on the pretraining train split",
      "vocab_size": learned,
      "chars": {k: sum(map(len, v)) for k, v in texts.items()},
      "documents": {k: len(v) for k, v in texts.items()},
      "tokens": {k: int(v.size) for k, v in streams.items()},
  }
  os.makedirs(out_dir, exist_ok=True)
  with outputs.atomic_path(tokenizer_path) as tmp:
    tokenizer.save(tmp)
  atomic_savez(cache, description=np.asarray(json.dumps(description)), **streams)
  return Data(streams, learned, description, tokenizer)


def atomic_savez(path: str, **arrays) -> None:
  """``np.savez`` to a temporary name, then an atomic rename (no half-written file)."""
  outputs.savez(path, **arrays)


def cached_json(path: str, compute):
  """The JSON at ``path`` if it exists (a damaged file is a UsageError naming it), else
  ``compute()`` written there atomically (resume)."""
  return outputs.cached_json(path, compute)


def covering_windows(stream: np.ndarray, seq_len: int, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The whole stream as ``[n, seq_len + 1]`` windows (stride ``seq_len``: every token after
  the first is a target exactly once) and a ``[n, seq_len]`` target mask; the last window is
  padded and masked, and ``n`` is rounded up to a multiple of ``batch_size`` with fully masked
  rows (one compiled evaluation shape)."""
  targets = stream.size - 1
  count = -(-targets // seq_len)
  count = -(-count // batch_size) * batch_size
  padded = np.zeros(count * seq_len + 1, np.int32)
  padded[:stream.size] = stream
  starts = np.arange(count) * seq_len
  windows = np.stack([padded[s:s + seq_len + 1] for s in starts])
  mask = (starts[:, None] + np.arange(1, seq_len + 1)[None, :]) <= targets
  return windows, mask


def prompt_windows(stream: np.ndarray, length: int, max_count: int) -> np.ndarray:
  """Non-overlapping ``[n, length]`` windows of a held-out stream (``n <= max_count``, evenly
  spread over it): the prefix of each is a prompt, the rest the human continuation."""
  available = stream.size // length
  count = min(available, max_count)
  starts = (np.arange(count) * available // count) * length
  return np.stack([stream[s:s + length] for s in starts]).astype(np.int32)


def batch_at(stream: np.ndarray, seed: int, phase: int, step: int, batch_size: int,
             seq_len: int) -> np.ndarray:
  """The ``[batch_size, seq_len + 1]`` training windows of ``step``: a function of
  ``(seed, phase, step)`` only, so every objective of a seed sees the same batches and a
  resumed run continues the same order."""
  rng = np.random.default_rng([seed, phase, step])
  starts = rng.integers(0, stream.size - seq_len, size=batch_size)
  return np.stack([stream[s:s + seq_len + 1] for s in starts])


def decode(tokenizer, rows: np.ndarray) -> list[str]:
  """Text of each row of token ids (``<|endoftext|>`` dropped)."""
  return tokenizer.decode_batch([list(map(int, r)) for r in rows], skip_special_tokens=True)
