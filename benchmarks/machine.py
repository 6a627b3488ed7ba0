"""Where a benchmark's numbers come from: one description of the machine for every experiment.

:func:`machine_description` records the CPU model, the cores this process may use, the JAX
backend and devices, and the versions of the libraries that shape the numbers -- never a path of
the machine (no interpreter or site-packages location). :func:`machine_summary` is its one-line
form for Markdown reports.
"""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
from typing import Any


def cpu_model() -> str:
  """The CPU model name (``lscpu``, else ``/proc/cpuinfo``, else ``platform.processor()``)."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
    for line in text.splitlines():
      if line.lower().startswith("model name"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.lower().startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
  """Cores this process may run on (its CPU affinity where the OS reports it)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def machine_description(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
  """CPU, cores, JAX backend and devices, and library versions (no filesystem path).

  Args:
    extra_packages: more distribution names whose installed version to record (e.g.
      ``("mauve-text", "scikit-learn")``); a missing one is recorded as ``None``.

  Returns:
    A JSON-serialisable dict with keys ``cpu``, ``cpu_count`` (cores visible to the OS),
    ``cpu_cores`` (cores this process may use), ``platform``, ``jax_backend``, ``devices``,
    ``accelerator`` (the first device's kind when it is not a CPU, else ``None``), ``python``
    and ``versions`` (a dict: jax, jaxlib, optax, flax, numpy and ``extra_packages``).
  """
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  def version(name: str) -> str | None:
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None

  device = jax.devices()[0]
  names = ("jax", "jaxlib", "optax", "flax", "numpy", *extra_packages)
  return {
      "cpu": cpu_model(),
      "cpu_count": os.cpu_count(),
      "cpu_cores": usable_cores(),
      "platform": platform.platform(),
      "jax_backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "accelerator": None if device.platform == "cpu" else f"{device.device_kind}",
      "python": platform.python_version(),
      "versions": {name: version(name) for name in names},
  }


def machine_summary(machine: dict[str, Any]) -> str:
  """One line for a report: ``"<cpu>, <n> cores (cpu); jax x, flax y, ..."``."""
  where = machine["accelerator"] or f"{machine['cpu']}, {machine['cpu_cores']} cores"
  versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v is not None)
  return f"{where} ({machine['jax_backend']}); Python {machine['python']}, {versions}"
