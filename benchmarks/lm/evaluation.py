"""Per regime: fine-tune the shared pretrained base(s) with every objective over paired seeds,
choose MixCE's ``η`` on validation MAUVE, run the cost ablation, evaluate every model (cached).

A regime (:class:`Regime`) names its fine-tuning, validation and test streams, steps, learning
rate, seeds and objectives. Every model is measured on the regime's test split: token metrics
over its first ``test_tokens`` tokens, ``max_prompts`` unbiased continuations of held-out prompts (MAUVE against
the human continuations of the same prompts, with two featurisers and ``mauve_seeds`` k-means
seeds), greedy continuations (repetition), and the human-vs-human ceiling from a second,
disjoint set of human continuations of the same size.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.lm import data as data_lib
from benchmarks.lm import gate as gate_lib
from benchmarks.lm import metrics, train
from benchmarks.lm import model as model_lib
from benchmarks.lm.config import Config
from benchmarks.lm.objectives import BY_NAME, COST_ABLATION, MIXCE_ETAS, OBJECTIVES, mixce

DECODING_TOP_P = {"unbiased": 1.0, "greedy": 1e-6}  # greedy: the nucleus shrinks to the argmax
MAIN_ORDER = ("ce", "emo", "emo_cap3", "tailr_open", "tailr", "mixce")
EXAMPLES = 3  # continuations shown per objective (random prompts, fixed per regime)


COINCIDE_DISTANCE = 0.01   # an ablation arm within 1% of the fine-tuning step of the frozen-head arm
COINCIDE_AGREEMENT = 0.99  # ... or with 99% of its continuations identical to that arm's
ABLATION_ARMS = tuple(o.name for o in COST_ABLATION)
MATCHED_ARMS = ("emo", "emo_cap3")  # EMO arms that get a temperature-matched CE arm
TEMPERATURE_RANGE = (0.5, 1.5)      # bisection interval of the matched temperature
REGIME_TITLES = {
    "C": "adaptation to another package's code (the headline)",
    "A": "fine-tuning on held-out standard-library files (the pretraining domain)",
    "B": "domain shift: code base fine-tuned on the reference manual",
}


class Regime(NamedTuple):
  """One fine-tuning regime of the experiment."""
  key: str                      # "C" | "A" | "B"
  title: str
  streams: tuple[str, str, str]  # train, validation, test
  steps: int
  lr: float
  seeds: tuple[int, ...]
  objectives: tuple[str, ...]   # main objectives (ce first; "mixce" = the chosen η)
  ablation: bool
  select_eta: bool
  gate: bool = False            # the one-seed CE pilot gate (benchmarks.lm.gate)
  match_temperature: bool = False  # CE at the temperature matching each EMO arm's entropy


def regimes(config: Config) -> list[Regime]:
  """The regimes of ``config`` in the order of ``config.regimes``."""
  seeds = config.seed_values()
  chosen = config.objectives or MAIN_ORDER
  main = tuple(o for o in MAIN_ORDER if o in chosen)
  built = {
      "C": Regime("C", REGIME_TITLES["C"], ("package_train", "package_val", "package_test"),
                  config.package_steps, config.package_lr, seeds, main,
                  config.ablation and "emo" in chosen, config.select_eta and "mixce" in chosen,
                  gate=True, match_temperature=any(a in chosen for a in MATCHED_ARMS)),
      "A": Regime("A", REGIME_TITLES["A"], ("adapt_train", "adapt_val", "adapt_test"),
                  config.finetune_steps, config.finetune_lr, seeds, main,
                  config.ablation and "emo" in chosen and "C" not in config.regimes,
                  config.select_eta and "mixce" in chosen and "C" not in config.regimes),
      "B": Regime("B", REGIME_TITLES["B"], ("finetune_train", "finetune_val", "finetune_test"),
                  config.shift_steps, config.shift_lr, seeds[:max(2, config.shift_seeds)],
                  tuple(o for o in MAIN_ORDER if o in chosen and (
                      o in config.shift_objectives or o == "ce")), False, False),
  }
  return [built[k] for k in config.regimes]


def all_objectives() -> tuple:
  """Every objective a train step may run (one compiled program for all of them)."""
  return (*OBJECTIVES, *COST_ABLATION, *(mixce(eta) for eta in MIXCE_ETAS))


def setup_description(config: Config, data: data_lib.Data) -> dict:
  """What was run, in words (for the report)."""
  tokens = data.description["tokens"]
  return {
      "pretraining text": data.description["pretrain_source"],
      "regime C text": data.description.get("package_source", ""),
      "regime A text": data.description.get("adapt_source", ""),
      "regime B text": data.description["finetune_source"],
      "splits (tokens)": ", ".join(f"{k} {v:,}" for k, v in tokens.items()),
      "model": (f"{config.num_layers} layers, d={config.d_model}, {config.num_heads} heads, "
                f"context {config.seq_len}, vocabulary {data.vocab_size} (byte-level BPE "
                "trained on the pretraining text), tied embeddings"),
      "pretraining": (f"{config.bases} base(s), {config.pretrain_steps} steps of "
                      f"{config.batch_size}x{config.seq_len} tokens at lr {config.pretrain_lr:g} "
                      f"(about {config.pretrain_steps * config.batch_size * config.seq_len / tokens['pretrain_train']:.1f} "
                      "epochs); every fine-tuning seed starts from a shared base, as the paper "
                      "shares one GPT-2"),
      "fine-tuning": (f"AdamW (clip 1, weight decay {config.weight_decay}), batch "
                      f"{config.finetune_batch_size}x{config.seq_len}, warmup then cosine decay "
                      f"to 10 %; regime C {config.package_steps} steps from lr "
                      f"{config.package_lr:g} (the pilot gate may change the learning rate; the "
                      "settings used are in the regime's section), regime A {config.finetune_steps} steps at lr {config.finetune_lr:g} (about "
                      f"{config.finetune_steps * config.batch_size * config.seq_len / tokens['adapt_train']:.1f}"
                      f" epochs), regime B {config.shift_steps} steps at lr {config.shift_lr:g} "
                      f"(about {config.shift_steps * config.batch_size * config.seq_len / tokens['finetune_train']:.1f}"
                      " epochs); each run keeps its checkpoint with the lowest validation NLL "
                      f"(first {config.val_tokens:,} validation tokens, every {config.eval_every} "
                      "steps; regime C every "
                      f"{max(config.eval_every, config.package_steps // 16)} steps, at the "
                      "pilot's step count)"),
      "generation": (f"{config.prefix_len}-token prefixes of up to {config.max_prompts} "
                     f"non-overlapping held-out test windows, {config.new_tokens} new tokens; "
                     "unbiased (temperature 1, top-p 1) and greedy; KV-cached sampler; the same "
                     "random keys for every model of a seed"),
      "MAUVE": (f"mauve-text on features of the continuation (the prompt is shared), "
                f"{config.mauve_seeds} k-means seeds per sampling run, averaged; primary "
                "features: code-token 1-3-gram TF-IDF (identifiers, numbers, punctuation; "
                "fitted on fine-tuning windows) of the continuation, TruncatedSVD to "
                f"{config.tfidf_dim} dimensions, independent of every model; secondary: final "
                "hidden states of the frozen pretrained base on prompt + continuation, "
                "mean-pooled over the continuation, which measures closeness to the base; "
                "human ceiling: two disjoint sets of human continuations of the same size"),
      "temperature-matched CE": (
          "per seed and EMO arm, CE sampled at the temperature whose mean entropy along CE's "
          f"own samples equals the EMO arm's at temperature 1, on {config.match_prompts} "
          f"validation prompts ({config.match_iterations} bisection steps in "
          f"[{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}]); then sampled after the "
          "test prompts with the same keys"),
      "token metrics": ("perplexity, accuracy, ECE (15 bins), Brier, entropy vs NLL over the "
                        f"first {config.test_tokens:,} test tokens; perplexity on held-out "
                        "pretraining text (forgetting)"),
      "repetition": (f"greedy continuations of the first {config.greedy_prompts} prompts "
                     "(rep-2 gap to the human continuations: TaiLr's degeneration claim)"),
  }


# ----------------------------------------------------------------------------------------------
# Samples


def _continuation(tokens: np.ndarray, prefix_len: int) -> np.ndarray:
  """Mask of the continuation positions (the prompt is shared by human and model text, so
  features are pooled over the continuation only, in the context of the prompt)."""
  return np.broadcast_to(np.arange(tokens.shape[1]) >= prefix_len, tokens.shape)


class Reference(NamedTuple):
  """Prompts, human continuations and their features, and the featurisers of one regime."""
  prompts: np.ndarray           # [n, P + N]: prompt + human continuation (MAUVE's p side)
  ceiling: np.ndarray           # [n, P + N]: a disjoint human set (the ceiling's q side)
  features: dict                # "hidden" / "tfidf" -> [n, k] features of the prompts' humans
  tfidf: object                 # texts -> features
  examples: np.ndarray          # indices of the prompts shown in the report


def _features(base, tokens: np.ndarray, texts, tfidf, prefix_len: int) -> dict:
  return {"hidden": np.asarray(model_lib.pooled_hidden_states(
      base, tokens, _continuation(tokens, prefix_len))), "tfidf": tfidf(texts)}


def mauve_pair(p: dict, q: dict, seeds) -> dict:
  """MAUVE of q against p with both featurisers, averaged over k-means ``seeds``."""
  return {f"mauve_{k}": metrics.mauve_score(p[k], q[k], seeds) for k in ("hidden", "tfidf")}


def sampling_key(key_seed: int, decoding: str, run: int) -> jax.Array:
  """The sampling key of a run: the same for every model of a seed (paired samples)."""
  index = list(DECODING_TOP_P).index(decoding)
  return jax.random.key(np.uint32((1_000_003 * key_seed + 101 * index + run) % 2**32))


def sample_metrics(model, base, prompts: np.ndarray, human: dict, tfidf, config: Config,
                   tokenizer, key_seed: int, decoding: str, run: int, with_mauve: bool,
                   keep: np.ndarray | None = None, temperature: float = 1.0,
                   tokens_out: dict | None = None) -> dict:
  """One sampling run of ``model`` after the prompts: text statistics, the mean entropy along
  the samples and (``with_mauve``) MAUVE against the human continuations (features ``human``)
  with ``config.mauve_seeds`` k-means seeds; ``keep`` rows' texts are returned as examples;
  the sampled tokens are put in ``tokens_out["tokens"]`` if given."""
  p = config.prefix_len
  tokens, entropy = model_lib.sample(model, prompts[:, :p], sampling_key(key_seed, decoding, run),
                                     config.new_tokens, temperature=temperature,
                                     top_p=DECODING_TOP_P[decoding], return_entropy=True)
  tokens = np.asarray(tokens)
  if tokens_out is not None:
    tokens_out["tokens"] = tokens
  texts = data_lib.decode(tokenizer, tokens[:, p:])
  result = metrics.text_statistics(texts)
  result["sample_entropy"] = float(np.mean(entropy))
  if temperature != 1.0:
    result["temperature"] = float(temperature)
  if with_mauve:
    seeds = range(run * config.mauve_seeds, (run + 1) * config.mauve_seeds)
    result.update(mauve_pair(human, _features(base, tokens, texts, tfidf, p), seeds))
  if keep is not None:
    result["examples"] = [texts[i] for i in keep]
  return result


def build_reference(base, stream: np.ndarray, train_stream: np.ndarray, config: Config,
                    tokenizer) -> Reference:
  """Prompts and a disjoint human set of the same size (alternate windows of the test stream),
  the TF-IDF featuriser (fitted on fine-tuning windows) and the prompts' human features."""
  length = config.prefix_len + config.new_tokens
  windows = data_lib.prompt_windows(stream, length, 2 * config.max_prompts)
  count = len(windows) // 2
  prompts, ceiling = windows[0::2][:count], windows[1::2][:count]
  reference = data_lib.prompt_windows(train_stream, length, 4000)
  tfidf = metrics.tfidf_featurizer(data_lib.decode(tokenizer, reference[:, config.prefix_len:]),
                                   config.tfidf_dim)
  texts = data_lib.decode(tokenizer, prompts[:, config.prefix_len:])
  examples = np.sort(np.random.default_rng(2024).choice(count, EXAMPLES, replace=False))
  return Reference(prompts, ceiling, _features(base, prompts, texts, tfidf, config.prefix_len),
                   tfidf, examples)


def human_summary(base, ref: Reference, config: Config, tokenizer) -> dict:
  """Text statistics of the human continuations and the human-vs-human ceiling (same size)."""
  p = config.prefix_len
  texts = data_lib.decode(tokenizer, ref.ceiling[:, p:])
  ceiling = mauve_pair(ref.features, _features(base, ref.ceiling, texts, ref.tfidf, p),
                       range(config.mauve_seeds))
  human_texts = data_lib.decode(tokenizer, ref.prompts[:, p:])
  return {
      "text": metrics.text_statistics(human_texts),
      "ceiling_text": metrics.text_statistics(texts),
      "ceiling_mauve_hidden": ceiling["mauve_hidden"],
      "ceiling_mauve_tfidf": ceiling["mauve_tfidf"],
      "samples_per_side": len(ref.prompts),
      "prompts": [data_lib.decode(tokenizer, ref.prompts[i:i + 1, :p])[0] for i in ref.examples],
      "examples": [human_texts[i] for i in ref.examples],
  }


# ----------------------------------------------------------------------------------------------
# Runs


class Context(NamedTuple):
  """What every fine-tuning run and evaluation of an experiment shares."""
  config: Config
  data: data_lib.Data
  out_dir: str
  objectives: tuple
  common: dict            # keyword arguments of train.train_run
  covering: dict          # name -> (windows, mask)


def make_context(config: Config, data: data_lib.Data, out_dir: str, progress: bool,
                 log) -> Context:
  model_config = config.model_config(data.vocab_size)
  covering = {k: data_lib.covering_windows(data.streams[k], config.seq_len,
                                           config.eval_batch_size)
              for k in ("pretrain_val",)}
  for k, tokens in (("finetune_val", config.val_tokens), ("adapt_val", config.val_tokens),
                    ("package_val", config.val_tokens), ("finetune_test", config.test_tokens),
                    ("adapt_test", config.test_tokens), ("package_test", config.test_tokens)):
    covering[k] = data_lib.covering_windows(data.streams[k][:tokens + 1], config.seq_len,
                                            config.eval_batch_size)
  common = {"model_config": model_config, "batch_size": config.batch_size,
            "eval_batch_size": config.eval_batch_size, "warmup_steps": config.warmup_steps,
            "weight_decay": config.weight_decay,
            "path": train.LossPath(config.loss_path == "fused", config.chunk_size),
            "out_dir": out_dir, "progress": progress, "log": log,
            "objectives": all_objectives()}
  return Context(config, data, out_dir, all_objectives(), common, covering)


def pretrain_bases(ctx: Context) -> list[tuple]:
  """``[(state, record)]`` of the ``config.bases`` pretrained bases (base ``b`` from
  initialisation ``b``), cached as ``pretrain_b{b}.npz``."""
  config, streams = ctx.config, ctx.data.streams
  model_config = ctx.common["model_config"]
  zero_cost = jnp.zeros((model_config.vocab_size, model_config.d_model))
  out = []
  for b in range(config.bases):
    state, record = train.train_run(
        train.Run(f"pretrain_b{b}", 0, streams["pretrain_train"], config.pretrain_steps,
                  config.pretrain_lr, b, 0),
        init_state=nnx.state(model_lib.build_model(model_config, b)), cost=zero_cost,
        eval_every=max(config.eval_every, config.pretrain_steps // 8),
        val_sets={"pretrain_val": ctx.covering["pretrain_val"],
                  "adapt_val": ctx.covering["adapt_val"],
                  "finetune_val": ctx.covering["finetune_val"]}, **ctx.common)
    out.append((state, record))
  return out


def _model(ctx: Context, state):
  model = model_lib.build_model(ctx.common["model_config"], 0)
  nnx.update(model, state)
  return model


def fine_tune(ctx: Context, regime: Regime, name: str, objective, seed: int, base_state,
              cost, run_name: str | None = None) -> tuple:
  """One fine-tuning run (cached as ``run_name``, by default ``ft_{regime}_s{seed}_{name}``):
  ``(best state, record)``."""
  index = [o.name for o in ctx.objectives].index(objective.name)
  return train.train_run(
      train.Run(run_name or f"ft_{regime.key}_s{seed}_{name}", index,
                ctx.data.streams[regime.streams[0]], regime.steps, regime.lr, seed, 1),
      init_state=base_state, cost=cost, eval_every=regime_eval_every(ctx.config, regime),
      val_sets={"val": ctx.covering[regime.streams[1]]},
      **dict(ctx.common, batch_size=ctx.config.finetune_batch_size))


def regime_eval_every(config: Config, regime: Regime) -> int:
  """Steps between validation evaluations of a regime's runs: ``config.eval_every``, or
  more for long runs (at most about 16 evaluations per run)."""
  return max(config.eval_every, regime.steps // 16)


def plateau_drop(record: dict, steps: int) -> float:
  """How much the last quarter of a run lowered its best validation NLL (nats, >= 0): the best
  NLL among evaluations at steps ``<= 0.75 steps`` minus the best of all."""
  curve = record["curves"]["val"]
  early = [v for s, v in zip(curve["step"], curve["nll"]) if s <= 0.75 * steps]
  return float(min(early) - min(curve["nll"]))


def select_eta(ctx: Context, regime: Regime, base_state, base, log) -> dict:
  """MixCE's ``η`` on the regime's first seed (cached): every ``η`` of ``config.mixce_etas``
  fine-tuned and sampled twice (unbiased, other keys and k-means seeds) after validation
  prompts; its score is the mean of the two runs' MAUVE (primary featuriser). The noise of a
  score difference is one run's standard deviation ``σ`` (pooled over the ``η``s from the two
  runs); the chosen ``η`` is the **smallest** ``η`` whose score is within ``2σ`` of the best
  (the closest to MixCE's own end of the mix that validation cannot tell from the best)."""
  config, seed = ctx.config, regime.seeds[0]
  primary = f"mauve_{config.primary_featuriser}"

  def compute():
    val_stream = ctx.data.streams[regime.streams[1]]
    ref = build_reference(base, val_stream, ctx.data.streams[regime.streams[0]], config,
                          ctx.data.tokenizer)
    scores = {}
    for eta in config.mixce_etas:
      objective = mixce(eta)
      state, _ = fine_tune(ctx, regime, objective.name, objective, seed, base_state,
                           jnp.zeros_like(base.head))
      runs = [sample_metrics(_model(ctx, state), base, ref.prompts, ref.features, ref.tfidf,
                             config, ctx.data.tokenizer, 7919 + seed, "unbiased", r, True)
              for r in range(2)]
      scores[f"{eta:g}"] = {k: float(np.mean([r[k] for r in runs]))
                            for k in ("mauve_hidden", "mauve_tfidf")}
      scores[f"{eta:g}"]["runs"] = [r[primary] for r in runs]
      log(f"regime {regime.key} MixCE η={eta:g}: validation MAUVE ({primary}) "
          f"{scores[f'{eta:g}'][primary]:.3f}")
    return choose_eta(scores, primary) | {
        "seed": seed, "validation_prompts": len(ref.prompts),
        "criterion": (f"validation MAUVE ({config.primary_featuriser}), mean of two sampling "
                      "runs; the smallest η within 2σ of the best (σ: one run's standard "
                      "deviation, pooled over the η)")}

  return data_lib.cached_json(os.path.join(ctx.out_dir, f"mixce_select_{regime.key}.json"),
                              compute)


def choose_eta(scores: dict, primary: str) -> dict:
  """The smallest ``η`` (keys of ``scores``) whose ``primary`` score is within ``2σ`` of the
  best, ``σ = sqrt(mean over η of (run1 - run2)² / 2)`` from each ``η``'s two ``"runs"``."""
  sigma = math.sqrt(float(np.mean([(v["runs"][0] - v["runs"][1]) ** 2 / 2
                                   for v in scores.values()])))
  best = max(v[primary] for v in scores.values())
  within = [float(e) for e, v in scores.items() if v[primary] >= best - 2 * sigma]
  return {"scores": scores, "noise_one_run": sigma, "best": best, "eta": min(within),
          "within_noise": sorted(within)}


def run_gate(ctx: Context, regime: Regime, base_state, base, log) -> dict:
  """The one-seed CE pilot of :mod:`benchmarks.lm.gate` (cached as ``gate_{regime}.json``):
  every attempt's learning rate, ratio, best step and failed gates, the settings the regime
  runs with, and whether it passed. The passing pilot's run becomes the first seed's CE run."""
  config = ctx.config
  seed = regime.seeds[0]
  bounds = tuple(config.gate_ratio)

  def compute():
    base_nll = metrics.evaluate(base, *ctx.covering[regime.streams[2]],
                                config.eval_batch_size)["nll"]
    attempts, lr = [], regime.lr
    for attempt in range(config.gate_attempts):
      trial = regime._replace(lr=lr)
      name = f"pilot_{regime.key}_{attempt}"
      state, record = fine_tune(ctx, trial, "ce", BY_NAME["ce"], seed, base_state,
                                jnp.zeros_like(base.head), run_name=name)
      ce_nll = metrics.evaluate(_model(ctx, state), *ctx.covering[regime.streams[2]],
                                config.eval_batch_size)["nll"]
      ratio = math.exp(base_nll - ce_nll)
      failed = gate_lib.failed_gates(ratio, record["best_step"], regime.steps, bounds)
      attempts.append({"lr": lr, "steps": regime.steps, "ratio": ratio,
                       "best_step": record["best_step"],
                       "best_step_fraction": record["best_step"] / regime.steps,
                       "failed": failed, "run": name})
      log(f"regime {regime.key} pilot {attempt}: lr {lr:g}, base/CE test perplexity ratio "
          f"{ratio:.3f}, best step {record['best_step']} of {regime.steps}"
          + (f"; missed: {', '.join(failed)}" if failed else "; passed"))
      if not failed:
        break
      if attempt + 1 < config.gate_attempts:
        lr, rule = gate_lib.adjust(lr, ratio, failed, bounds)
        attempts[-1]["rule"] = rule
    last = attempts[-1]
    return {"bounds": list(bounds), "attempts": attempts, "passed": not last["failed"],
            "lr": last["lr"], "steps": last["steps"], "seed": seed, "run": last["run"],
            "enforced": config.enforce_gate, "base_test_nll": base_nll}

  result = data_lib.cached_json(os.path.join(ctx.out_dir, f"gate_{regime.key}.json"), compute)
  if not result["passed"] and config.enforce_gate:
    raise gate_lib.GateError(
        f"regime {regime.key}: the CE pilot missed its gate after {len(result['attempts'])} "
        f"attempt(s) ({gate_lib.describe_failure(result['attempts'][-1], tuple(result['bounds']))})"
        f"; the adaptation does not adapt at these settings. Change --package-steps / "
        f"--package-lr, or --package.")
  target = os.path.join(ctx.out_dir, f"ft_{regime.key}_s{seed}_ce.npz")
  if not os.path.exists(target):  # the same run: same objective, data, steps, lr and seed
    shutil.copyfile(os.path.join(ctx.out_dir, f"{result['run']}.npz"), target)
  return result


def base_bits_per_char(ctx: Context, regime: Regime, base) -> dict:
  """The base's code length of the regime's whole test split in bits per character, next to
  ``xz -9`` and ``bzip2 -9`` on the same files (cached as ``bpc_{regime}.json``)."""
  config, stream = ctx.config, regime.streams[2]

  def compute():
    windows, mask = data_lib.covering_windows(ctx.data.streams[stream], config.seq_len,
                                              config.eval_batch_size)
    result = metrics.evaluate(base, windows, mask, config.eval_batch_size)
    tokens = ctx.data.streams[stream]
    compressors = data_lib.text_compressed_bits(
        data_lib.target_text(ctx.data.tokenizer, tokens, tokens.size, start=0))
    return {"split": stream, "chars": compressors["chars"], "tokens": result["tokens"],
            "base": data_lib.bits_per_char(result["nll"] * result["tokens"],
                                           compressors["chars"]),
            "xz_9": compressors["xz_9"], "bz2_9": compressors["bz2_9"]}

  return data_lib.cached_json(os.path.join(ctx.out_dir, f"bpc_{regime.key}.json"), compute)


def match_temperature(ctx: Context, regime: Regime, seed: int, models: dict, base,
                      arm: str) -> dict:
  """The temperature at which CE's samples have ``arm``'s mean entropy along its own samples,
  on ``config.match_prompts`` validation prompts (cached): bisection over
  :data:`TEMPERATURE_RANGE` (``config.match_iterations`` halvings; the entropy along a model's
  own samples grows with the temperature)."""
  config = ctx.config
  length = config.prefix_len + config.new_tokens
  prompts = data_lib.prompt_windows(ctx.data.streams[regime.streams[1]], length,
                                    config.match_prompts)[:, :config.prefix_len]

  def entropy(model, temperature: float) -> float:
    _, values = model_lib.sample(model, prompts, sampling_key(5_003 + seed, "unbiased", 0),
                                 config.new_tokens, temperature=temperature,
                                 return_entropy=True)
    return float(np.mean(values))

  def compute():
    target = entropy(models[arm], 1.0)
    low, high = TEMPERATURE_RANGE
    history = []
    for _ in range(config.match_iterations):
      middle = 0.5 * (low + high)
      value = entropy(models["ce"], middle)
      history.append([middle, value])
      low, high = (middle, high) if value < target else (low, middle)
    temperature = 0.5 * (low + high)
    return {"arm": arm, "target_entropy": target, "temperature": temperature,
            "ce_entropy": entropy(models["ce"], temperature),
            "ce_entropy_at_1": entropy(models["ce"], 1.0), "history": history,
            "validation_prompts": len(prompts)}

  return data_lib.cached_json(os.path.join(ctx.out_dir, f"match_{regime.key}_s{seed}_{arm}.json"),
                              compute)


def _vector(state) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(state)])


def ablation_distances(states: dict, base_state, tokens: dict, arms) -> dict:
  """Per cost arm: its parameter distance to the frozen-head arm ``emo`` relative to how far
  the two moved from the base at their selected checkpoints
  (``||θ_arm - θ_emo|| / max(||θ_arm - θ_base||, ||θ_emo - θ_base||)``, 0 when both are the
  base), and the agreement of their unbiased samples under the same keys (share of identical
  continuation tokens and of identical continuations); ``coincides`` when the distance is
  below :data:`COINCIDE_DISTANCE` or at least :data:`COINCIDE_AGREEMENT` of the continuations
  are identical."""
  emo = _vector(states["emo"])
  base = _vector(base_state)
  out = {}
  for arm in arms:
    theta = _vector(states[arm])
    moved = max(float(np.linalg.norm(theta - base)), float(np.linalg.norm(emo - base)))
    gap = float(np.linalg.norm(theta - emo))
    distance = gap / moved if moved > 0 else 0.0
    entry = {"relative_distance": distance, "token_agreement": None,
             "identical_samples": None}
    if tokens.get(arm) is not None and tokens.get("emo") is not None:
      same = tokens[arm] == tokens["emo"]
      entry["token_agreement"] = float(same.mean())
      entry["identical_samples"] = float(same.all(axis=1).mean())
    entry["coincides"] = bool(distance < COINCIDE_DISTANCE or (
        entry["identical_samples"] is not None
        and entry["identical_samples"] >= COINCIDE_AGREEMENT))
    out[arm] = entry
  return out


def evaluate_model(ctx: Context, regime: Regime, model, base, ref: Reference, key_seed: int,
                   decodings: tuple[str, ...], unbiased_runs: int,
                   tokens_path: str | None = None) -> dict:
  """Token metrics on the test split and on held-out pretraining text; unbiased runs with
  MAUVE (the first run's tokens saved at ``tokens_path`` if given); the other ``decodings``
  with text statistics only."""
  config = ctx.config
  out = {"test": metrics.evaluate(model, *ctx.covering[regime.streams[2]],
                                  config.eval_batch_size),
         "pretrain_val": metrics.evaluate(model, *ctx.covering["pretrain_val"],
                                          config.eval_batch_size),
         "samples": {}}
  first: dict = {}
  runs = [sample_metrics(model, base, ref.prompts, ref.features, ref.tfidf, config,
                         ctx.data.tokenizer, key_seed, "unbiased", r, True,
                         ref.examples if r == 0 else None, tokens_out=first if r == 0 else None)
          for r in range(unbiased_runs)]
  if tokens_path is not None:
    data_lib.atomic_savez(tokens_path, tokens=first["tokens"])
  out["samples"]["unbiased"] = dict(runs[0], runs=[{k: v for k, v in r.items()
                                                    if k != "examples"} for r in runs])
  for decoding in decodings:
    if decoding != "unbiased":
      out["samples"][decoding] = sample_metrics(
          model, base, ref.prompts[:config.greedy_prompts], ref.features, ref.tfidf, config,
          ctx.data.tokenizer, key_seed, decoding, 0, False)
  return out


def _load_tokens(path: str) -> np.ndarray | None:
  if not os.path.exists(path):
    return None
  with np.load(path) as stored:
    return stored["tokens"]


def run_regime(ctx: Context, regime: Regime, bases: list[tuple], *, progress: bool = True,
               log=print) -> dict:
  """Every paired run of one regime: the pilot gate (if the regime has one), the base's bits
  per character, per seed the records and metrics of every model (and the temperature-matched
  CE arms, the ablation arms' distances), the base(s), the human reference, the MixCE
  selection."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  config, out_dir = ctx.config, ctx.out_dir
  stream = ctx.data.streams
  base_models = [_model(ctx, state) for state, _ in bases]
  gate = None
  if regime.gate:
    gate = run_gate(ctx, regime, bases[0][0], base_models[0], log)
    regime = regime._replace(lr=gate["lr"], steps=gate["steps"])
  bits = base_bits_per_char(ctx, regime, base_models[0])
  # one featuriser and one reference for the regime: base 0 (the bases' spread is reported)
  ref = build_reference(base_models[0], stream[regime.streams[2]], stream[regime.streams[0]],
                        config, ctx.data.tokenizer)
  human = data_lib.cached_json(os.path.join(out_dir, f"human_{regime.key}.json"),
                               lambda: human_summary(base_models[0], ref, config,
                                                     ctx.data.tokenizer))
  main_decodings = tuple(config.decodings)
  base_eval = [data_lib.cached_json(
      os.path.join(out_dir, f"eval_{regime.key}_base{b}.json"),
      lambda b=b: evaluate_model(ctx, regime, base_models[b], base_models[0], ref, 99_991 + b,
                                 main_decodings, 1)) for b in range(len(bases))]
  selection = None
  names = list(regime.objectives)
  chosen = {n: BY_NAME[n] for n in names}
  if regime.select_eta:
    selection = select_eta(ctx, regime, bases[0][0], base_models[0], log)
    chosen["mixce"] = mixce(selection["eta"])
  if regime.ablation:
    names += [o.name for o in COST_ABLATION]
    chosen.update({o.name: o for o in COST_ABLATION})
  matched_arms = [a for a in MATCHED_ARMS if a in names] if regime.match_temperature else []
  per_seed = []
  for seed in tqdm(regime.seeds, desc=f"regime {regime.key} seeds", disable=not progress,
                   dynamic_ncols=True):
    b = seed % len(bases)
    base_state, base = bases[b][0], base_models[b]
    cost = jnp.array(base.head, copy=True)  # the frozen EMO cost: the pretrained head
    records, models, states = {}, {}, {}
    for name in names:
      objective = chosen[name]
      given = cost
      if name == "emo_cehead":
        given = jnp.array(models["ce"].head, copy=True)
      elif name == "emo_random":
        given = jax.random.normal(jax.random.key(31_337 + seed), cost.shape)
      run_name = objective.name if name == "mixce" else name
      states[name], records[name] = fine_tune(ctx, regime, run_name, objective, seed,
                                              base_state, given)
      records[name] = dict(records[name], plateau_drop=plateau_drop(records[name],
                                                                    regime.steps))
      models[name] = _model(ctx, states[name])
    evaluated = {}
    ablation_arms = [n for n in names if n in ABLATION_ARMS]
    for name in names:
      decodings = main_decodings if name in regime.objectives else ("unbiased",)
      runs = 2 if name == "ce" else 1  # CE's second run measures one sampling run's noise
      tokens_path = (os.path.join(out_dir, f"tokens_{regime.key}_s{seed}_{name}.npz")
                     if ablation_arms and name in ("emo", *ablation_arms) else None)
      evaluated[name] = data_lib.cached_json(
          os.path.join(out_dir, f"eval_{regime.key}_s{seed}_{name}.json"),
          lambda model=models[name], decodings=decodings, runs=runs, seed=seed, path=tokens_path:
          evaluate_model(ctx, regime, model, base_models[0], ref, seed, decodings, runs, path))
    evaluated["pretrained"] = base_eval[b]
    entry = {"seed": seed, "base": b, "models": evaluated, "records": records}
    if matched_arms:
      entry["matched"] = {}
      for arm in matched_arms:
        match = match_temperature(ctx, regime, seed, models, base_models[0], arm)
        samples = data_lib.cached_json(
            os.path.join(out_dir, f"eval_{regime.key}_s{seed}_ce_t_{arm}.json"),
            lambda t=match["temperature"], seed=seed, ce=models["ce"]: sample_metrics(
                ce, base_models[0], ref.prompts, ref.features, ref.tfidf, config,
                ctx.data.tokenizer, seed, "unbiased", 0, True, temperature=t))
        entry["matched"][arm] = dict(match, samples=samples)
    if ablation_arms:
      tokens = {n: _load_tokens(os.path.join(out_dir, f"tokens_{regime.key}_s{seed}_{n}.npz"))
                for n in ("emo", *ablation_arms)}
      entry["ablation_distance"] = ablation_distances(states, base_state, tokens, ablation_arms)
    per_seed.append(entry)
    log(f"regime {regime.key} seed {seed} done")
  return {"key": regime.key, "title": regime.title, "objectives": names,
          "labels": {n: chosen[n].label for n in names},
          "sources": {n: chosen[n].source for n in names},
          "seeds": per_seed, "human": human, "bases": base_eval, "mixce_selection": selection,
          "steps": regime.steps, "lr": regime.lr, "streams": list(regime.streams),
          "gate": gate, "bits_per_char": bits, "matched_arms": matched_arms}


def mean_curves(per_seed: list[dict], objectives) -> dict:
  """Fine-tuning validation NLL per objective, averaged over seeds (same evaluation steps)."""
  out = {}
  for name in objectives:
    curves = [s["records"][name]["curves"]["val"] for s in per_seed]
    out[name] = {"step": curves[0]["step"],
                 "nll": np.mean([c["nll"] for c in curves], axis=0).tolist()}
  return out
