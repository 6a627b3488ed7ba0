"""Starting multi-process JAX runs on loopback from the tests, through the launcher a user runs
(examples/launch_local.py).

Ports: each pytest-xdist worker takes its coordinator ports from its own block of 1000 below
the kernel's ephemeral range (Linux's default starts at 32768, where the processes' own gloo and
gRPC client sockets are), so two workers never pick the same port; within a worker the runs are
sequential, and a port is used only if it can be bound at that moment.
"""

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("launch_local",
                                               ROOT / "examples" / "launch_local.py")
assert _spec is not None and _spec.loader is not None
launcher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launcher)

PORT_BASE, PORTS_PER_WORKER = 20000, 1000
_next = itertools.count()


def worker_index() -> int:
  worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3"; absent without xdist
  return int(worker[2:]) if worker[2:].isdigit() else 0


def free_port() -> int:
  """A port of this worker's block that can be bound now."""
  block = PORT_BASE + PORTS_PER_WORKER * (worker_index() % 12)
  for _ in range(PORTS_PER_WORKER):
    port = block + (os.getpid() + next(_next)) % PORTS_PER_WORKER
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      return port
  raise RuntimeError(f"no free port in [{block}, {block + PORTS_PER_WORKER})")


def env(cache: Path | None = None) -> dict[str, str]:
  """This checkout first on the path; with ``cache``, JAX's persistent compilation cache there
  (every program cached), so that the runs of a test module compile each program once."""
  path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  extra = {} if cache is None else {"JAX_COMPILATION_CACHE_DIR": str(cache),
                                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  return dict(os.environ, PYTHONPATH=path, **extra)


def start(script, args, processes: int, devices_per_process: int, log: Path | None = None,
          cache: Path | None = None):
  """The processes of one run (stdout and stderr to ``log``<i>.txt, or captured)."""
  procs, port = [], free_port()
  for i in range(processes):
    out = open(f"{log}{i}.txt", "w") if log else subprocess.PIPE  # noqa: SIM115
    procs.append(subprocess.Popen(
        launcher.process_command(str(script), [str(a) for a in args], port, processes, i),
        env=launcher.process_env(devices_per_process, env(cache)), stdout=out,
        stderr=subprocess.STDOUT, text=True))
  return procs


def run(script, args, processes: int, devices_per_process: int, timeout: float,
        cache: Path | None = None) -> str:
  """Runs ``examples/launch_local.py`` (the user's command) and returns its output; fails the
  test on a non-zero status, and kills the processes after ``timeout`` seconds."""
  command = [sys.executable, str(ROOT / "examples" / "launch_local.py"), "--processes",
             str(processes), "--devices-per-process", str(devices_per_process), "--port",
             str(free_port()), "--timeout", str(timeout), "--grace", "30", "--", str(script),
             *[str(a) for a in args]]
  result = subprocess.run(command, env=env(cache), capture_output=True, text=True,
                          timeout=timeout + 60, check=False)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-4000:]
  return output
