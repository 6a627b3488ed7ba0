"""Small offline classification experiments for the objectives of emoloss.

Each experiment is a module with a ``main(argv) -> dict`` and a command line::

  python -m benchmarks.classification.long_tail [--quick] [--out DIR] [--seeds N]
  python -m benchmarks.classification.rare_f1
  python -m benchmarks.classification.flooding
  python -m benchmarks.classification.exact_toy
  python -m benchmarks.classification.accuracy_vs_ce

Data ship with scikit-learn (``load_digits``); nothing is downloaded. Results (a JSON file and a
PNG plot per experiment, named ``cls_<experiment>.*``) go to ``--out``; without it, a full run
writes the committed results in ``benchmarks/results/`` and a ``--quick`` run writes into
``runs/classification_quick/`` (never into ``benchmarks/results/``). Every run ends by listing
the files it wrote; ``--help`` shows each option's default.
"""
