"""examples/launch_local.py's failure rule, with plain Python processes (no JAX): when one
process fails, the launcher names it, gives the others the grace period, kills those still
running, and exits with the first failure's status."""

import sys
import time

from tests.multiproc import helpers

launcher = helpers.launcher


def test_a_failed_process_is_named_and_the_others_are_killed_after_the_grace_period():
  procs = [launcher.subprocess.Popen([sys.executable, "-c", code]) for code in (
      "import time; time.sleep(60)", "import sys; sys.exit(3)")]
  lines = []
  start = time.monotonic()
  status = launcher.wait(procs, grace=1.0, timeout=50, log=lambda *a, **_: lines.append(a[0]))
  assert status == 3
  assert time.monotonic() - start < 30  # the sleeper was killed, not waited for
  assert procs[0].returncode == -9
  assert lines[0].startswith("launch_local: process 1 exited with status 3"), lines
  assert "killing processes [0]" in lines[-1], lines


def test_all_succeed_or_the_status_of_a_signal():
  procs = [launcher.subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
  assert launcher.wait(procs, grace=1.0) == 0
  killed = [launcher.subprocess.Popen([sys.executable, "-c",
                                       "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])]
  lines = []
  assert launcher.wait(killed, grace=1.0, log=lambda *a, **_: lines.append(a[0])) == 128 + 9
  assert "process 0 was killed by SIGKILL" in lines[0]


def test_command_and_environment_of_each_process():
  command = launcher.process_command("train.py", ["--mesh", "2", "2"], 1234, 4, 3)
  assert command[1:] == ["train.py", "--mesh", "2", "2", "--coordinator-address",
                         "127.0.0.1:1234", "--num-processes", "4", "--process-id", "3"]
  env = launcher.process_env(2, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x=1"})
  assert env["XLA_FLAGS"] == "--x=1 --xla_force_host_platform_device_count=2"
  assert env["JAX_PLATFORMS"] == "cpu"
