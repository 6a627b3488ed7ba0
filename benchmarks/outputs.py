"""What every experiment script does with its files: one mechanism for all of them.

* :func:`check_output_file` / :func:`check_output_dir`: an output path that cannot be written
  (an existing folder where a file is wanted, a folder that cannot be created or written) is
  refused **before** any training, as a :class:`UsageError` naming the option;
* :func:`write_text`, :func:`write_json`, :func:`save_figure`, :func:`savez`: every report and
  results file is written to a temporary file beside its destination and renamed onto it, so a
  run stopped or crashing while reporting never leaves a truncated or empty file behind (the
  previous version stays whole);
* :func:`load_cached`: a cache file that cannot be read (truncated, damaged) is reported as a
  :class:`UsageError` naming the file and the remedy, not as a bare decoder error;
* :func:`counting_native_lines`: third-party log spam written by native code (faiss's
  ``WARNING clustering`` lines) counted instead of printed, summarised once by the run;
* :func:`quick_output_dir`: where a ``--quick`` run writes when not told (a ``runs/`` folder of
  the working tree, never ``benchmarks/results/``), and :func:`report_outputs`, the closing
  lines of every run saying where its files went.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import pickle
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")
RUNS = os.path.join(REPO_ROOT, "runs")

T = TypeVar("T")


class UsageError(Exception):
  """A problem with the command line or the inputs, reported without a traceback."""


# ----------------------------------------------------------------------------------------------
# Output paths, checked before any work


def check_output_dir(path: str, flag: str) -> None:
  """Refuses a folder that cannot hold outputs: a file of that name, or a folder that cannot be
  created or written to (tried: the folder is created and a temporary file written and removed
  in it)."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"{flag} {path!r} is a file, not a folder.")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise UsageError(f"{flag} {path!r}: cannot write there ({error.strerror or error}).") from None


def check_output_file(path: str, flag: str, siblings: Sequence[str] = ()) -> None:
  """Refuses an output file that cannot be written: an existing folder of that name (or of a
  sibling's name: ``siblings`` are extensions such as ``".md"`` written beside ``path``'s stem),
  a folder that cannot be created, or one without write permission; an existing file without
  write permission in a writable folder is fine (it is replaced, not opened)."""
  path = os.path.abspath(path)
  stem = os.path.splitext(path)[0]
  for target in (path, *(stem + ext for ext in siblings)):
    if os.path.isdir(target):
      raise UsageError(f"{flag} {path!r}: {target!r} is an existing folder, not a file.")
  check_output_dir(os.path.dirname(path), f"the folder of {flag}")


# ----------------------------------------------------------------------------------------------
# Atomic writes


def _temporary_beside(path: str) -> tuple[int, str]:
  """An open temporary file in ``path``'s folder (created if needed), with ``path``'s extension
  and the permissions a plain ``open`` would give (``mkstemp`` makes it owner-only)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  stem, ext = os.path.splitext(os.path.basename(path))
  handle, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  return handle, tmp


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO[Any]]:
  """A file opened on a temporary name beside ``path`` and renamed onto ``path`` when the block
  ends without an error (removed otherwise): readers see the old file or the whole new one."""
  with atomic_path(path) as tmp, open(tmp, mode) as f:
    yield f


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """A temporary path beside ``path`` with the same extension, for writers that take a path
  (``savefig``, ``np.save``, a tokenizer's ``save``); renamed onto ``path`` when the block ends
  without an error, removed otherwise."""
  handle, tmp = _temporary_beside(path)
  os.close(handle)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """``text`` written to ``path`` atomically (:func:`atomic_file`)."""
  with atomic_file(path) as f:
    f.write(text)


def write_json(path: str, value: Any, indent: int | None = 1) -> None:
  """``value`` as JSON at ``path``, atomically: serialised first, so an unserialisable value
  leaves the old file untouched."""
  write_text(path, json.dumps(value, indent=indent) + ("\n" if indent is not None else ""))


def save_figure(figure, path: str, **kwargs) -> None:
  """``figure.savefig(path, **kwargs)`` atomically (the format from ``path``'s extension)."""
  kwargs.setdefault("format", os.path.splitext(path)[1].lstrip(".") or "png")
  with atomic_file(path, "wb") as f:
    figure.savefig(f, **kwargs)


def savez(path: str, **arrays) -> None:
  """``np.savez(path, **arrays)`` atomically."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  with atomic_file(path, "wb") as f:
    np.savez(f, **arrays)


# ----------------------------------------------------------------------------------------------
# Cache files


_UNREADABLE = (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile, zlib.error,
               pickle.UnpicklingError)


def load_cached(path: str, load: Callable[[str], T]) -> T:
  """``load(path)`` for a cache file of an experiment's output folder; a file that cannot be read
  (truncated, damaged: ``JSONDecodeError``, ``BadZipFile``, ...) raises a :class:`UsageError`
  naming it and the remedy (delete it and the run recomputes it; or start afresh in another
  output folder)."""
  try:
    return load(path)
  except _UNREADABLE as error:
    raise UsageError(
        f"cannot read the cached file {path} ({type(error).__name__}: {error}); it is truncated "
        "or damaged. Delete it (the run recomputes it and keeps the rest of its folder), or "
        "start afresh in another --out.") from error


def read_json(path: str) -> Any:
  """The JSON at ``path`` (a cache file: see :func:`load_cached`)."""
  def load(p):
    with open(p) as f:
      return json.load(f)
  return load_cached(path, load)


def cached_json(path: str, compute: Callable[[], Any]) -> Any:
  """The JSON at ``path`` if it exists, else ``compute()`` written there atomically (resume)."""
  if os.path.exists(path):
    return read_json(path)
  value = compute()
  write_json(path, value, indent=None)
  return value


# ----------------------------------------------------------------------------------------------
# Where outputs go


class HelpFormatter(argparse.HelpFormatter):
  """``--help`` that shows every option's default: appended as ``(default: X)`` unless the help
  text already states one; a flag (``store_true``) shows ``(default: off)``."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if "default" in text or action.default is argparse.SUPPRESS or action.dest == "help":
      return text
    if action.nargs == 0:
      return f"{text} (default: off)"
    return f"{text} (default: %(default)s)"


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def check_quick_destination(path: str, flag: str) -> None:
  """Refuses a ``--quick`` output inside ``benchmarks/results/``: that folder holds the
  committed results of the full runs, which a CI-sized run must not replace."""
  if _inside(path, RESULTS):
    raise UsageError(f"{flag} {path!r}: a --quick run does not write into {RESULTS} (the "
                     "committed results of the full runs); choose another path.")


def quick_output_dir(name: str) -> str:
  """The default folder of a ``--quick`` run: ``runs/<name>`` in the working tree (ignored by
  git), never ``benchmarks/results/`` (the committed results of the full runs)."""
  return os.path.join(RUNS, name)


def report_outputs(paths: Sequence[str], log: Callable[[str], Any] = print,
                   note: str = "") -> None:
  """The closing lines of a run: every file it wrote (absolute paths), and ``note``."""
  log("outputs written" + (f" ({note})" if note else "") + ":")
  for path in paths:
    log(f"  {os.path.abspath(path)}")


# ----------------------------------------------------------------------------------------------
# Third-party log spam

SILENCED: collections.Counter = collections.Counter()


@contextlib.contextmanager
def counting_native_lines(prefix: str) -> Iterator[None]:
  """Inside the block, lines starting with ``prefix`` that anything (native code included:
  faiss prints with C's ``fprintf``) writes to the process's standard error are counted in
  :data:`SILENCED` instead of shown; every other line is passed on when the block ends."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with tempfile.TemporaryFile() as capture:
      os.dup2(capture.fileno(), 2)
      try:
        yield
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines(keepends=True):
          if line.startswith(prefix):
            SILENCED[prefix] += 1
          else:
            sys.stderr.write(line)
        sys.stderr.flush()
  finally:
    os.close(saved)
