"""Known-oracle experiment: exact precision and recall of each LM objective.

* :mod:`~benchmarks.oracle.exact` -- exact token-level forward/reverse KL, total variation and
  EMO transport cost between two models' next-token distributions along given prefixes;
* :mod:`~benchmarks.oracle.run` -- oracle, its samples, students from scratch, command line;
* :mod:`~benchmarks.oracle.finetune` -- the fine-tuning regime: a shifted target oracle and
  pretrained, misspecified students fine-tuned on its samples;
* :mod:`~benchmarks.oracle.temperature` -- CE sampled at a temperature (the matched-entropy
  control);
* :mod:`~benchmarks.oracle.report` -- paired comparisons to CE, claims, Markdown and PNG.

Data, model, sampler, training step, objectives and statistics come from :mod:`benchmarks.lm`.
"""
