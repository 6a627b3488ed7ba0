"""Starts N processes of a JAX script on this machine, joined by ``jax.distributed``: for trying a
multi-process run (a TPU pod slice, a multi-node GPU job) on one CPU host.

Each process runs ``python SCRIPT ARGS --coordinator-address 127.0.0.1:PORT --num-processes N
--process-id I`` with ``--devices-per-process`` simulated CPU devices (JAX_PLATFORMS=cpu and
XLA's host device count); the script initialises ``jax.distributed`` from those settings (as
``examples/lm_training.py`` does). The processes share this terminal's output.

  python examples/launch_local.py --processes 2 --devices-per-process 2 -- \\
      examples/lm_training.py --mesh 2 2 --steps 10

The exit status is 0 when every process ends with 0. When one fails, its number and status are
printed; the others are given ``--grace`` seconds to stop by themselves (JAX's heartbeat timeout
stops them with an error naming the lost process) before they are killed, and the status is
that of the first failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  """A TCP port that is free now on 127.0.0.1 (chosen by the operating system)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_command(script: str, args: list[str], port: int, processes: int,
                    process_id: int) -> list[str]:
  return [sys.executable, script, *args, "--coordinator-address", f"127.0.0.1:{port}",
          "--num-processes", str(processes), "--process-id", str(process_id)]


def process_env(devices_per_process: int, base=None) -> dict[str, str]:
  """``base`` (default: this environment) with JAX on ``devices_per_process`` CPU devices."""
  base = os.environ if base is None else base
  flags = [f for f in base.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
  return dict(base, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags),
              PYTHONUNBUFFERED="1")


def start(script: str, args: list[str], processes: int, devices_per_process: int,
          port: int | None = None, **popen) -> list[subprocess.Popen]:
  """Starts the processes (``popen``: extra ``subprocess.Popen`` arguments, e.g. ``stdout``)."""
  port = free_port() if port is None else port
  env = process_env(devices_per_process)
  return [subprocess.Popen(process_command(script, args, port, processes, i), env=env, **popen)
          for i in range(processes)]


def describe(status: int) -> str:
  if status < 0:
    return f"was killed by {signal.Signals(-status).name}"
  return f"exited with status {status}"


def exit_status(returncode: int) -> int:
  """A shell's exit status for a child's return code (128 + N for a signal N)."""
  return 128 - returncode if returncode < 0 else returncode


def wait(procs: list[subprocess.Popen], grace: float, timeout: float | None = None,
         log=print) -> int:
  """Waits for every process; see the module's docstring for the exit status and the failure
  rule. ``timeout``: kill them all after this many seconds (status 124)."""
  start_time, failed_at, status = time.monotonic(), None, 0
  while True:
    running = [i for i, p in enumerate(procs) if p.poll() is None]
    now = time.monotonic()
    for i, p in enumerate(procs):
      if failed_at is None and p.returncode not in (None, 0):
        failed_at, status = now, exit_status(p.returncode)
        log(f"launch_local: process {i} {describe(p.returncode)}"
            + (f"; the others get {grace:g} s to stop" if running else ""), flush=True)
    if not running:
      return status
    expired = timeout is not None and now - start_time > timeout
    if expired or (failed_at is not None and now - failed_at > grace):
      log(f"launch_local: killing processes {running}", flush=True)
      for i in running:
        procs[i].kill()
      for p in procs:
        p.wait()
      return status or 124
    time.sleep(0.1)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=2, metavar="N")
  parser.add_argument("--devices-per-process", type=int, default=1, metavar="D",
                      help="simulated CPU devices in each process")
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port on 127.0.0.1 (default: a free one)")
  parser.add_argument("--grace", type=float, default=90.0, metavar="SECONDS",
                      help="after a process fails, how long the others may run before they are "
                      "killed (default %(default)s: longer than the script's heartbeat timeout)")
  parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="kill every process after this long (default: none)")
  parser.add_argument("script", help="the Python script each process runs")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
  args = parser.parse_args(argv)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices-per-process must be at least 1")
  script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
  procs = start(args.script, script_args, args.processes, args.devices_per_process, args.port)
  try:
    return wait(procs, args.grace, args.timeout)
  except KeyboardInterrupt:
    for p in procs:
      p.kill()
    return 130


if __name__ == "__main__":
  sys.exit(main())
