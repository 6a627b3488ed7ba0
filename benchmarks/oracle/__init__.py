"""Known-oracle experiment: exact precision and recall of each LM objective.

* :mod:`~benchmarks.oracle.exact` -- exact token-level forward/reverse KL, total variation and
  EMO transport cost between two models' next-token distributions along given prefixes;
* :mod:`~benchmarks.oracle.run` -- oracle, its samples, students, command line;
* :mod:`~benchmarks.oracle.report` -- paired comparisons to CE, claims, Markdown and PNG.

Data, model, sampler, training step, objectives and statistics come from :mod:`benchmarks.lm`.
"""
