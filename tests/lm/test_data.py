"""Corpora, splits by file and code lengths of the LM experiment (benchmarks/lm/data.py)."""

import math
import os

import numpy as np
import pytest

from benchmarks.lm import data as data_lib
from benchmarks.lm.config import UsageError


def test_compressor_bits_per_char_on_texts_of_known_entropy():
  """Uniform random text over 64 symbols carries 6 bits per character: xz and bzip2 cannot go
  below it and come close; a repeated line compresses to almost nothing."""
  rng = np.random.default_rng(0)
  alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_."))
  random_docs = ["".join(rng.choice(alphabet, 50_000)) for _ in range(4)]
  random_bits = data_lib.compressor_bits_per_char(random_docs)
  assert random_bits["chars"] == 4 * 50_001  # one separator per document
  for name in ("xz_9", "bz2_9"):
    assert 5.95 < random_bits[name] < 6.4, (name, random_bits[name])
  repeated = data_lib.compressor_bits_per_char(["def f(x):\n  return x\n" * 5000])
  assert repeated["xz_9"] < 0.05 and repeated["bz2_9"] < 0.05


def test_the_text_of_a_token_stream_is_the_joined_documents():
  docs = ["def f(x):\n  return x + 1\n", "import os\n", "x = 'caf\u00e9'\n"] * 30
  tokenizer = data_lib.train_tokenizer(docs, 300)
  stream = data_lib.encode_stream(tokenizer, docs)
  assert data_lib.target_text(tokenizer, stream, stream.size, start=0) == data_lib.joined_text(
      docs)
  first = data_lib.target_text(tokenizer, stream, 5)  # the first five predicted tokens
  assert first == data_lib.target_text(tokenizer, stream[1:], 5, start=0)


def test_bits_per_char_of_a_uniform_code():
  """A model that spends log(256) nats on each of n tokens of one character each needs 8 bits
  per character."""
  assert data_lib.bits_per_char(1000 * math.log(256), 1000) == pytest.approx(8.0)
  assert data_lib.joined_text(["ab", "c"]) == "ab\x00c\x00"


def test_split_files_puts_every_file_in_exactly_one_split():
  docs = [f"# file {i}\n" + "x = 1\n" * (i % 7 + 1) for i in range(60)]
  train, val, test = data_lib.split_files(docs, 100, 150, 10_000)
  assert val and test and train
  assert sorted(train + val + test) == sorted(docs)
  assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
  assert sum(map(len, val)) >= 100 and sum(map(len, val[:-1])) < 100  # the budget, by file


def test_package_documents_are_the_non_test_sources_of_an_installed_package():
  docs, source = data_lib.package_documents("sklearn")
  assert len(docs) > 100 and "non-test .py files" in source and "sklearn" in source
  assert os.sep + "site-packages" not in source  # no filesystem path
  again, _ = data_lib.package_documents("sklearn")
  assert again == docs  # a fixed order: the data does not depend on the seed
  with pytest.raises(UsageError, match="is not installed"):
    data_lib.package_documents("no_such_package_here")
