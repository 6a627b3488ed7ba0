"""Per seed: pretrain a base, fine-tune every objective, evaluate every model (cached)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.lm import data as data_lib
from benchmarks.lm import metrics, train
from benchmarks.lm import model as model_lib
from benchmarks.lm.config import Config
from benchmarks.lm.objectives import BY_NAME, OBJECTIVES

DECODINGS = ("unbiased", "top_p")


def setup_description(config: Config, data: data_lib.Data) -> dict:
  """What was run, in words (for the report)."""
  tokens = data.description["tokens"]
  return {
      "pretraining text": data.description["pretrain_source"],
      "fine-tuning text": data.description["finetune_source"],
      "splits (tokens)": ", ".join(f"{k} {v:,}" for k, v in tokens.items()),
      "model": (f"{config.num_layers} layers, d={config.d_model}, {config.num_heads} heads, "
                f"context {config.seq_len}, vocabulary {data.vocab_size} (byte-level BPE "
                "trained on the pretraining text), tied embeddings"),
      "training": (f"AdamW (clip 1, weight decay {config.weight_decay}), batch "
                   f"{config.batch_size}x{config.seq_len}; pretraining {config.pretrain_steps} "
                   f"steps at lr {config.pretrain_lr:g}; fine-tuning {config.finetune_steps} "
                   f"steps at lr {config.finetune_lr:g} (about "
                   f"{config.finetune_steps * config.batch_size * config.seq_len / tokens['finetune_train']:.1f}"
                   " epochs), warmup then cosine decay; checkpoint of each run chosen by "
                   f"validation NLL (every {config.eval_every} steps)"),
      "objectives": "; ".join(f"{BY_NAME[o].label}: {BY_NAME[o].source}"
                              for o in config.objectives),
      "generation": (f"{config.prefix_len}-token prefixes of up to {config.max_prompts} "
                     f"non-overlapping held-out test windows, {config.new_tokens} new tokens, "
                     f"unbiased (temperature 1) and top-p {config.top_p}, "
                     f"{config.sampling_runs} sampling run(s) each, KV-cached sampler"),
      "MAUVE": (f"mauve-text on features of the continuation (the prompt is shared), "
                f"{config.mauve_seeds} k-means seed(s) per sampling run (another per run), "
                "averaged; features (a) final hidden "
                "states of the seed's frozen pretrained base on prompt + continuation, "
                "mean-pooled over the continuation, (b) word 1-3-gram TF-IDF (fitted on "
                "fine-tuning training windows) of the continuation text, TruncatedSVD to "
                f"{config.tfidf_dim} dimensions"),
      "token metrics": ("perplexity, accuracy, ECE (15 bins), Brier, entropy vs NLL over the "
                        "whole test split; perplexity on held-out pretraining-domain text "
                        "(forgetting)"),
  }


def _sample_metrics(model, base, prompts, human_features, tfidf, config: Config, tokenizer,
                    seed: int) -> dict:
  """Sampling runs of both decodings, each measured, averaged over runs."""
  p = config.prefix_len
  out = {}
  for d, decoding in enumerate(DECODINGS):
    top_p = 1.0 if decoding == "unbiased" else config.top_p
    runs = []
    for r in range(config.sampling_runs):
      # Each sampling run gets its own k-means seeds, so the average over runs is also one
      # over k-means seeds.
      mauve_seeds = range(r * config.mauve_seeds, (r + 1) * config.mauve_seeds)
      key = jax.random.key(np.uint32(1_000_003 * seed + 101 * d + r))  # same for every model
      tokens = np.asarray(model_lib.sample(model, prompts[:, :p], key, config.new_tokens,
                                           top_p=top_p))
      hidden = np.asarray(model_lib.pooled_hidden_states(base, tokens, _continuation(tokens, p)))
      texts = data_lib.decode(tokenizer, tokens[:, p:])
      result = metrics.text_statistics(texts)
      result["mauve_hidden"] = metrics.mauve_score(human_features["hidden"], hidden, mauve_seeds)
      result["mauve_tfidf"] = metrics.mauve_score(human_features["tfidf"], tfidf(texts),
                                                  mauve_seeds)
      runs.append(result)
    out[decoding] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    out[decoding]["runs"] = runs
  return out


def _continuation(tokens: np.ndarray, prefix_len: int) -> np.ndarray:
  """Mask of the continuation positions (the prompt is shared by human and model text, so
  features are pooled over the continuation only, in the context of the prompt)."""
  return np.broadcast_to(np.arange(tokens.shape[1]) >= prefix_len, tokens.shape)


def _human_reference(base, prompts, tfidf, config: Config, tokenizer) -> dict:
  p = config.prefix_len
  hidden = np.asarray(model_lib.pooled_hidden_states(base, prompts, _continuation(prompts, p)))
  texts = data_lib.decode(tokenizer, prompts[:, p:])
  features = tfidf(texts)
  seeds = range(config.mauve_seeds * config.sampling_runs)
  return {
      "features": {"hidden": hidden, "tfidf": features},
      "summary": {
          "text": metrics.text_statistics(texts),
          "mauve_hidden_halves": metrics.mauve_score(hidden[0::2], hidden[1::2], seeds),
          "mauve_tfidf_halves": metrics.mauve_score(features[0::2], features[1::2], seeds),
          "prompts": len(prompts),
      },
  }


def run_seeds(config: Config, data: data_lib.Data, out_dir: str, *, progress: bool = True,
              log=print) -> list[dict]:
  """Every paired run: per seed its records, per-model metrics and the human reference."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  model_config = config.model_config(data.vocab_size)
  streams = data.streams
  covering = {k: data_lib.covering_windows(streams[k], config.seq_len, config.eval_batch_size)
              for k in ("pretrain_val", "finetune_val", "finetune_test")}
  prompts = data_lib.prompt_windows(streams["finetune_test"],
                                    config.prefix_len + config.new_tokens, config.max_prompts)
  reference_windows = data_lib.prompt_windows(streams["finetune_train"],
                                              config.prefix_len + config.new_tokens, 4000)
  tfidf = metrics.tfidf_featurizer(data_lib.decode(data.tokenizer, reference_windows),
                                   config.tfidf_dim)
  objectives = tuple(o for o in OBJECTIVES if o.name in config.objectives)
  path = train.LossPath(config.loss_path == "fused", config.chunk_size)
  common = {"model_config": model_config, "batch_size": config.batch_size,
            "eval_batch_size": config.eval_batch_size, "warmup_steps": config.warmup_steps,
            "weight_decay": config.weight_decay, "path": path, "out_dir": out_dir,
            "progress": progress, "log": log}
  zero_cost = jnp.zeros((model_config.vocab_size, model_config.d_model))
  results = []
  seeds = config.seed_values()
  for seed in tqdm(seeds, desc="seeds", disable=not progress, dynamic_ncols=True):
    untrained = model_lib.build_model(model_config, seed)
    base_state, base_record = train.train_run(
        train.Run(f"pretrain_s{seed}", 0, streams["pretrain_train"], config.pretrain_steps,
                  config.pretrain_lr, seed, 0),
        objectives=objectives, init_state=nnx.state(untrained), cost=zero_cost,
        eval_every=max(config.eval_every, config.pretrain_steps // 5),
        val_sets={"pretrain_val": covering["pretrain_val"],
                  "finetune_val": covering["finetune_val"]}, **common)
    base = model_lib.build_model(model_config, seed)
    nnx.update(base, base_state)
    cost = jnp.array(base.head, copy=True)  # the frozen EMO cost: the pretrained head
    models = {"untrained": untrained, "pretrained": base}
    records = {"pretrain": base_record}
    for index, objective in enumerate(objectives):
      state, record = train.train_run(
          train.Run(f"ft_s{seed}_{objective.name}", index, streams["finetune_train"],
                    config.finetune_steps, config.finetune_lr, seed, 1),
          objectives=objectives, init_state=base_state, cost=cost, eval_every=config.eval_every,
          val_sets={"finetune_val": covering["finetune_val"]}, **common)
      models[objective.name] = model_lib.build_model(model_config, seed)
      nnx.update(models[objective.name], state)
      records[objective.name] = record
    human = _human_reference(base, prompts, tfidf, config, data.tokenizer)

    def evaluate(model, base=base, human=human, seed=seed):
      return {
          "test": metrics.evaluate(model, *covering["finetune_test"], config.eval_batch_size),
          "pretrain_val": metrics.evaluate(model, *covering["pretrain_val"],
                                           config.eval_batch_size),
          "samples": _sample_metrics(model, base, prompts, human["features"], tfidf, config,
                                     data.tokenizer, seed),
      }

    evaluated = {}
    for name, model in tqdm(models.items(), desc=f"evaluate seed {seed}", leave=False,
                            disable=not progress, dynamic_ncols=True):
      evaluated[name] = data_lib.cached_json(os.path.join(out_dir, f"eval_s{seed}_{name}.json"),
                                     lambda model=model: evaluate(model))
    results.append({"seed": seed, "models": evaluated, "human": human["summary"],
                    "records": records})
  return results


def mean_curves(per_seed: list[dict], objectives) -> dict:
  """Fine-tuning validation NLL per objective, averaged over seeds (same evaluation steps)."""
  out = {}
  for name in objectives:
    curves = [s["records"][name]["curves"]["finetune_val"] for s in per_seed]
    out[name] = {"step": curves[0]["step"],
                 "nll": np.mean([c["nll"] for c in curves], axis=0).tolist()}
  return out
