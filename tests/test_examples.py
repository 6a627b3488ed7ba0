import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_learns_the_clusters():
  namespace = runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
  assert float(namespace["accuracy"]) > 0.9
