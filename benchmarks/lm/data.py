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
  (every reported number);
* regime C (adaptation to another package's code, the headline): the non-test ``.py`` source of
  an installed third-party package (scikit-learn by default; its ``tests`` folders, ``test_*``
  files and vendored ``externals`` left out), in a fixed shuffled order, split by file into
  validation, test and fine-tuning text (every file in exactly one split).

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
PACKAGE_EXCLUDED_DIRS = frozenset({
    "tests", "test", "testing", "__pycache__", "externals", "_vendor", "vendored", "conftest"})
STREAMS = ("pretrain_train", "pretrain_val", "finetune_train", "finetune_val", "finetune_test",
           "adapt_train", "adapt_val", "adapt_test", "package_train", "package_val",
           "package_test")


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


def package_documents(package: str) -> tuple[list[str], str]:
  """The non-test ``.py`` files of the installed package ``package`` (an import name) in a fixed
  shuffled order, and a one-line description of the source (no filesystem path)."""
  import importlib  # pylint: disable=import-outside-toplevel
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  try:
    module = importlib.import_module(package)
  except ImportError:
    raise UsageError(f"--package {package!r} is not installed (regime C fine-tunes on an "
                     "installed package's source; install the experiments extra or name "
                     "another package).") from None
  folder = os.path.dirname(module.__file__ or "")
  files = [f for f in _text_files(folder, PACKAGE_EXCLUDED_DIRS) if f.endswith(".py")
           and not os.path.basename(f).startswith(("test_", "conftest"))]
  if len(files) < 6:
    raise UsageError(f"--package {package!r} holds {len(files)} non-test .py file(s); regime C "
                     "needs enough files to split them into train, validation and test.")
  order = np.random.default_rng(0).permutation(len(files))  # fixed: the data, not the seed
  try:
    version = importlib.metadata.version({"sklearn": "scikit-learn"}.get(package, package))
  except importlib.metadata.PackageNotFoundError:
    version = getattr(module, "__version__", "unknown version")
  return ([_read_text(files[i]) for i in order],
          (f"{package} {version} source ({len(files)} non-test .py files; tests, test_* files "
           "and vendored code excluded; split by file)"))


def split_files(documents: Sequence[str], val_chars: int, test_chars: int, train_chars: int
                ) -> tuple[list[str], list[str], list[str]]:
  """``(train, val, test)`` of whole documents, in order: about ``val_chars``, then
  ``test_chars``, then ``train_chars`` characters (no document is in two splits)."""
  rest = list(documents)
  parts: list[list[str]] = []
  for budget in (val_chars, test_chars, train_chars):
    part, taken = [], 0
    while rest and taken < budget:
      part.append(rest.pop(0))
      taken += len(part[-1])
    parts.append(part)
  val, test, train = parts
  return train, val, test


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
  train, val, test = split_files(documents[pretraining_used:], val_chars, test_chars,
                                 train_chars)
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


def corpus_texts(config: Config, package: bool = True) -> tuple[dict[str, list[str]], dict]:
  """The documents of every split (:data:`STREAMS`) and each corpus's description;
  ``package=False`` leaves regime C's splits empty (results made before it existed)."""
  pre_docs, pre_source = load_documents(config.pretrain_corpus, "pretrain")
  fine_docs, fine_source = load_documents(config.finetune_corpus, "finetune")
  pre_train, pre_val = split_by_budget(pre_docs, config.pretrain_val_chars, config.pretrain_chars)
  fine_train, fine_val, fine_test = split_held_out(fine_docs, config.held_out_every)
  adapt_train, adapt_val, adapt_test = split_held_out_files(
      pre_docs, len(pre_train) + len(pre_val), config.adapt_val_chars, config.adapt_test_chars,
      config.adapt_train_chars)
  package_train: list[str] = []
  package_val: list[str] = []
  package_test: list[str] = []
  package_source = ""
  if package:
    package_docs, package_source = package_documents(config.package)
    package_train, package_val, package_test = split_files(
        package_docs, config.package_val_chars, config.package_test_chars,
        config.package_train_chars)
    if not package_train:
      raise UsageError(f"--package {config.package!r}: its source holds too little text for "
                       "validation, test and fine-tuning files; lower --package-test-chars.")
  texts = {"pretrain_train": pre_train, "pretrain_val": pre_val, "finetune_train": fine_train,
           "finetune_val": fine_val, "finetune_test": fine_test, "adapt_train": adapt_train,
           "adapt_val": adapt_val, "adapt_test": adapt_test, "package_train": package_train,
           "package_val": package_val, "package_test": package_test}
  return texts, {"pretrain": pre_source, "finetune": fine_source, "package": package_source}


def target_text(tokenizer, stream: np.ndarray, count: int, start: int = 1) -> str:
  """The text of ``count`` tokens of ``stream`` from ``start`` (by default the first ``count``
  predicted tokens), each ``<|endoftext|>`` as one separator character: the characters that a
  model's NLL over those targets codes (:func:`bits_per_char`). With ``start=0`` and
  ``count=stream.size`` it is :func:`joined_text` of the documents (the BPE is lossless)."""
  eos = tokenizer.token_to_id(SPECIAL_TOKEN)
  parts: list[str] = []
  run: list[int] = []
  for token in stream[start:start + count].tolist():
    if token == eos:
      parts += [tokenizer.decode(run, skip_special_tokens=True), "\x00"]
      run = []
    else:
      run.append(token)
  parts.append(tokenizer.decode(run, skip_special_tokens=True))
  return "".join(parts)


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

  texts, sources = corpus_texts(config)
  pre_train = texts["pretrain_train"]
  adapt_files = sum(len(texts[k]) for k in ("adapt_train", "adapt_val", "adapt_test"))
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
      "pretrain_source": sources["pretrain"],
      "finetune_source": sources["finetune"],
      "adapt_source": (f"{adapt_files} files of the pretraining corpus held out from "
                       "pretraining (split by file)"),
      "package_source": sources["package"],
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


def joined_text(documents: Sequence[str]) -> str:
  """The documents as one text, each followed by one separator character (``\\x00``): the
  text a token stream of them encodes, with ``<|endoftext|>`` counted as one character."""
  return "".join(d + "\x00" for d in documents)


def compressor_bits_per_char(documents: Sequence[str]) -> dict:
  """Bits per character of general-purpose compressors on the documents joined
  (:func:`joined_text`): ``xz -9`` (Python's ``lzma``, preset 9, the same compressor) and
  ``bzip2 -9`` (``bz2``), with the character count."""
  return text_compressed_bits(joined_text(documents))


def text_compressed_bits(text: str) -> dict:
  """:func:`compressor_bits_per_char` of one text."""
  import bz2  # pylint: disable=import-outside-toplevel
  import lzma  # pylint: disable=import-outside-toplevel
  raw = text.encode("utf-8")
  chars = len(text)
  return {"chars": chars, "utf8_bytes": len(raw),
          "xz_9": 8.0 * len(lzma.compress(raw, preset=9)) / chars,
          "bz2_9": 8.0 * len(bz2.compress(raw, 9)) / chars}


def bits_per_char(total_nll_nats: float, chars: int) -> float:
  """A model's code length of a text in bits per character: its summed NLL over the text's
  tokens (nats) over ``ln 2`` and the number of characters."""
  return total_nll_nats / np.log(2.0) / chars


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
