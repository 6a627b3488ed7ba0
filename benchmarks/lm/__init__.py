"""The LM fine-tuning experiment, one module per concern (reusable by other experiments).

* :mod:`~benchmarks.lm.data` -- offline corpora, BPE tokenizer, token windows, batches;
* :mod:`~benchmarks.lm.model` -- Flax NNX transformer, KV-cached sampler, likelihoods, features;
* :mod:`~benchmarks.lm.objectives` -- CE, EMO+CE (uncapped / cap 3, and its cost ablation),
  TaiLr, MixCE per token;
* :mod:`~benchmarks.lm.train` -- compiled train step, resumable runs, best-by-validation;
* :mod:`~benchmarks.lm.metrics` -- perplexity, calibration, rep-n, distinct-n, Zipf, MAUVE;
* :mod:`~benchmarks.lm.stats` -- paired t-intervals, sign counts, verdicts incl. "not testable
  here", the difference detectable at 80% power (generic);
* :mod:`~benchmarks.lm.gate` -- the CE pilot gate of the headline regime and its rule;
* :mod:`~benchmarks.lm.evaluation`, :mod:`~benchmarks.lm.report`, :mod:`~benchmarks.lm.run` --
  this experiment's orchestration, report and command line.
"""
