"""examples/lm_training.py as several processes (jax.distributed on loopback, 2 processes x 2 CPU
devices, mesh data 2 x model 2): a run killed mid-way stops every process within a bounded time,
naming the lost process; the resumed run restores the last complete checkpoint and ends bit for
bit where an uninterrupted 2-process run ends, and where one process with the same 4-device mesh
and the same global batch ends.

The runs are sequential (2 shared cores); the fingerprint compared is the SHA-256 of the final
parameters' bytes, which process 0 prints.
"""

import re
import shutil
import signal
import time

import pytest

from tests.multiproc import helpers

pytestmark = pytest.mark.experiments

SCRIPT = helpers.ROOT / "examples" / "lm_training.py"
STEPS = 8
HEARTBEAT = 5  # seconds (--heartbeat-timeout)
# A lost process is declared after HEARTBEAT seconds without heartbeats, and the coordination
# service then stops the others (they poll it for errors); the margin covers a loaded machine.
DETECTION_BOUND = HEARTBEAT + 40
FINGERPRINT = re.compile(r"parameters after step (\d+): sha256 ([0-9a-f]{64})")


def fingerprint(output: str, step: int = STEPS) -> str:
  found = FINGERPRINT.findall(output)
  assert len(found) == 1 and int(found[0][0]) == step, output[-3000:]
  return found[0][1]


def complete_steps(directory) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
  directory = tmp_path_factory.mktemp("uninterrupted")
  output = helpers.run(SCRIPT, ["--mesh", "2", "2", "--steps", STEPS, "--checkpoint-dir",
                                directory], processes=2, devices_per_process=2, timeout=300,
                       cache=cache)
  assert "2 processes, 4 devices" in output
  assert output.count("loss (token-mean EMO + CE)") == 1  # logged by process 0 only
  return fingerprint(output)


def test_one_process_with_the_same_mesh_and_batch_ends_bit_for_bit_equal(uninterrupted, cache):
  output = helpers.run(SCRIPT, ["--mesh", "2", "2", "--steps", STEPS], processes=1,
                       devices_per_process=4, timeout=300, cache=cache)
  assert fingerprint(output) == uninterrupted


def test_killed_process_stops_the_others_and_the_resumed_run_ends_bit_for_bit(uninterrupted,
                                                                             tmp_path, cache):
  """Process 1 is killed (SIGKILL) once the checkpoint of step 3 exists; process 0 exits
  non-zero within DETECTION_BOUND seconds with JAX's message naming process 1. A leftover
  temporary folder of a later step (what a save cut short leaves) is ignored: the resumed
  2-process run restores the latest complete step and ends with the uninterrupted run's
  parameters bit for bit."""
  directory = tmp_path / "checkpoints"
  args = ["--mesh", "2", "2", "--steps", STEPS, "--checkpoint-dir", directory, "--save-every",
          1, "--heartbeat-timeout", HEARTBEAT]
  procs = helpers.start(SCRIPT, args, 2, 2, log=tmp_path / "process", cache=cache)
  try:
    deadline = time.monotonic() + 300
    while not (directory / "3").exists():
      assert procs[0].poll() is None and procs[1].poll() is None, "a process ended early"
      assert time.monotonic() < deadline, "no checkpoint of step 3"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status = procs[0].wait(timeout=DETECTION_BOUND)
    detected = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
      p.wait()
  output = (tmp_path / "process0.txt").read_text()
  assert status != 0, output[-3000:]
  assert re.search(r"unhealthy \(stopped sending heartbeats\):\s*1\b", output), output[-3000:]
  print(f"process 0 stopped {detected:.1f} s after process 1 was killed (status {status})")

  steps = complete_steps(directory)
  assert steps and 3 <= steps[-1] < STEPS, steps
  # What a save of the next step cut short leaves (Orbax's temporary name, files inside).
  shutil.copytree(directory / str(steps[-1]),
                  directory / f"{steps[-1] + 1}.orbax-checkpoint-tmp-1234567890")
  output = helpers.run(SCRIPT, args, processes=2, devices_per_process=2, timeout=300,
                       cache=cache)
  assert f"resumed from the checkpoint of step {steps[-1]} in" in output
  assert fingerprint(output) == uninterrupted
