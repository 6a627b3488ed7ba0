"""The fine-tuning regime: a pretrained, misspecified student fine-tuned on a shifted oracle.

EMO's claim is about fine-tuning a pretrained language model (trained by maximum likelihood) that
cannot represent the data exactly, with a frozen copy of its own LM head as the cost. Here:

1. the pretraining oracle ``P0`` is the experiment's oracle; the **target oracle** ``P`` is
   ``P0`` trained further with CE on a different corpus (the Python reference manual, prose about
   the code ``P0`` learned), so it is related but shifted; ``KL(P‖P0)`` per token along ``P``'s
   samples (and ``KL(P0‖P)`` along ``P0``'s) says how far;
2. per student size (all smaller than ``P``: misspecified) and seed, a student is **pretrained**
   with CE on ``P0``'s training samples (warm-up, cosine decay to 10 %, best checkpoint by the
   NLL of ``P0``'s validation samples), saved (``pretrained_{size}_s{seed}.npz``);
3. from that same checkpoint (bit for bit: the digest of the starting parameters is recorded),
   it is **fine-tuned** on a limited set of ``P`` samples for a few epochs with each objective:
   AdamW, linear decay to 0 without warm-up (the schedule of DRSY/EMO
   ``language_modeling/run_lm.py``), the best checkpoint by the NLL of held-out ``P`` validation
   samples; the EMO mixes use a frozen copy of the pretrained student's own head as the cost
   (DRSY/EMO ``run_lm.py``: ``cost_embedding = deepcopy(lm_head.weight)`` of the pretrained model);
4. exact metrics against ``P`` (:func:`benchmarks.oracle.run.exact_metrics`), for the
   pretrained student (``base``) and every fine-tuned one;
5. for CE: its temperature curve and the continued-training check (CE fine-tuned for twice its
   selected steps, the same schedule rule over the longer run, evaluated at its last step).

Everything is cached in ``finetune/`` under the main vocabulary's folder, one file per run.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from benchmarks import outputs
from benchmarks.lm.data import cached_json
from benchmarks.oracle.training import cosine_decay, decayed_training, linear_decay

PRETRAIN_PHASE, FINETUNE_PHASE = 10, 11    # batch-order streams (the from-scratch students use 7)


def state_digest(state) -> str:
  """SHA-256 of every leaf of a parameter pytree (bytes, shapes and dtypes, in tree order)."""
  import jax  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(state):
    array = np.asarray(leaf)
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


class Models:
  """Models of one architecture from parameter states, without re-running the initialiser (an
  initialisation costs more than a merge): :meth:`of` a state, :meth:`load` a checkpoint."""

  def __init__(self, model_config):
    from flax import nnx  # pylint: disable=import-outside-toplevel

    from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel
    self.graphdef, self.template = nnx.split(build_model(model_config, 0))

  def of(self, state):
    """A model holding a copy of ``state`` (host or device arrays)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel
    return nnx.merge(self.graphdef, jax.tree.map(jnp.array, state))

  def load(self, path: str):
    """``(model, meta)`` of the ``best`` parameters saved in the checkpoint ``path``."""
    from benchmarks.lm import train  # pylint: disable=import-outside-toplevel
    trees, meta = train.load_checkpoint(path, {"best": self.template})
    return self.of(trees["best"]), meta


def target_oracle(config, data, oracle0, out_dir: str, progress: bool, log):
  """``P``: ``P0`` trained further with CE on the reference-manual stream (best by its held-out
  NLL), cached as ``target_oracle.npz``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.lm import train  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle.run import BY_NAME  # pylint: disable=import-outside-toplevel

  model_config = config.oracle_config(data.vocab_size)
  val = data_lib.covering_windows(data.streams["finetune_val"], config.seq_len, 64)
  run = train.Run("target_oracle", 0, data.streams["finetune_train"], config.shift_steps,
                  config.shift_lr, seed=12345, phase=1)
  best, record = train.train_run(
      run, model_config=model_config,
      init_state=jax.tree.map(jnp.array, nnx.state(oracle0)),
      objectives=tuple(BY_NAME[n] for n in config.objectives),
      cost=jnp.zeros((data.vocab_size, config.oracle_d_model)), val_sets={"finetune_val": val},
      batch_size=config.batch_size, eval_batch_size=64,
      eval_every=max(config.shift_steps // 8, 1), warmup_steps=config.warmup_steps,
      weight_decay=config.weight_decay, path=train.LossPath(), out_dir=out_dir,
      progress=progress, log=log)
  return Models(model_config).of(best), record


def target_samples(config, target, separator: int, out_dir: str) -> dict:
  """``P``'s samples: the limited fine-tuning set, validation, held-out test and reference sets
  (independent keys, none shared with ``P0``'s), cached as ``target_samples.npz``."""
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle.run import (
    _load_arrays,  # pylint: disable=import-outside-toplevel
    sample_rows,  # pylint: disable=import-outside-toplevel
  )
  path = os.path.join(out_dir, "target_samples.npz")
  if os.path.exists(path):
    return outputs.load_cached(path, _load_arrays)
  counts = {"train": config.target_train_samples, "held_out": config.held_out_samples,
            "self": config.student_samples, "val": config.target_val_samples}
  # independent rows in chunks of the students' sample count (the sampler compiled for P0's
  # samples of that shape serves: P has P0's architecture), split into the sets
  chunk = config.student_samples
  total = sum(counts.values())
  rows = np.concatenate([sample_rows(target, chunk, config.seq_len, separator,
                                     jax.random.key(100 + i))
                         for i in range(-(-total // chunk))])[:total]
  ends = np.cumsum(list(counts.values()))
  sets = dict(zip(counts, np.split(rows, ends[:-1])))
  data_lib.atomic_savez(path, **sets)
  return sets


def size_config(config, size, vocab_size: int):
  """The :class:`~benchmarks.lm.model.ModelConfig` of one student size ``(name, d, layers,
  heads, epochs)``."""
  from benchmarks.lm.model import ModelConfig  # pylint: disable=import-outside-toplevel
  _, d_model, layers, heads, _ = size
  return ModelConfig(vocab_size, config.seq_len, d_model, layers, heads)


def finetune_steps(config, size) -> int:
  """Steps of one fine-tuning run of the student ``size``: its ``epochs`` passes over the
  limited ``P`` set."""
  return size[4] * max(config.target_train_samples // config.batch_size, 1)


def run_finetune(config, data, oracle0, samples0: dict, separator: int, out_dir: str,
                 progress: bool, log) -> dict:
  """The whole regime (cached under ``out_dir``): ``{"per_regime": {size: [per seed {name:
  metrics}]}, "temperature": {size: [per seed {...}]}, "continued": {size: [...]},
  "finetune": {size: {...}}, "target": {...}}``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import train  # pylint: disable=import-outside-toplevel
  from benchmarks.lm.model import build_model  # pylint: disable=import-outside-toplevel
  from benchmarks.oracle import (
    exact,  # pylint: disable=import-outside-toplevel
    temperature,  # pylint: disable=import-outside-toplevel
  )
  from benchmarks.oracle.run import BY_NAME, exact_metrics, sample_rows  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  vocab_size = data.vocab_size
  target, target_record = target_oracle(config, data, oracle0, out_dir, progress, log)
  samples = target_samples(config, target, separator, out_dir)
  unit_head = exact.unit_rows(target.head)
  self_metrics = cached_json(os.path.join(out_dir, "target_self.json"), lambda: exact_metrics(
      target, target, samples["held_out"], samples["self"], unit_head))

  def shift():
    on_p = exact.along(target, oracle0, samples["held_out"], unit_head)
    on_p0 = exact.along(target, oracle0, samples0["held_out"], unit_head)
    return {"kl_p_p0": on_p["forward_kl"], "kl_p_p0_se": on_p["forward_kl_se"],
            "kl_p0_p": on_p0["reverse_kl"], "kl_p0_p_se": on_p0["reverse_kl_se"],
            "p0_ppl_test_on_p": float(np.exp(on_p["nll_q"]))}

  shift_metrics = cached_json(os.path.join(out_dir, "shift.json"), shift)
  log(f"fine-tuning regime: KL(P‖P0) = {shift_metrics['kl_p_p0']:.3f} nats/token")
  names = config.finetune_objectives
  # The from-scratch students' objectives (plus any others), indexed by name: the EMO mixes take
  # the cost passed to the step (here the frozen pretrained head), and a student architecture the
  # from-scratch runs share (d=16, 1 layer: `small`) reuses their compiled step.
  all_names = (*config.objectives, *(n for n in names if n not in config.objectives))
  objectives = tuple(BY_NAME[n] for n in all_names)
  total = len(config.finetune_sizes) * config.finetune_seeds * (len(names) + 4)
  bar = tqdm(total=total, desc="fine-tuning", disable=not progress, dynamic_ncols=True)
  out: dict = {"per_regime": {}, "temperature": {}, "continued": {}, "finetune": {},
               "target": {"training": {k: target_record[k] for k in ("best_step", "best_nll",
                                                                     "seconds")},
                          "self": self_metrics, **shift_metrics}}
  for size in config.finetune_sizes:
    regime, steps = size[0], finetune_steps(config, size)
    model_config = size_config(config, size, vocab_size)
    factory = Models(model_config)
    per_seed, curves, continued = [], [], []
    for seed in range(config.first_seed, config.first_seed + config.finetune_seeds):
      stem = os.path.join(out_dir, f"{regime}_s{seed}")
      sample_key = jax.random.key(2000 + seed)   # every model of a seed samples with this key
      pretrained_path = f"{stem}_pretrained.npz"
      if not os.path.exists(pretrained_path):
        bar.set_postfix_str(f"{regime} s{seed} pretraining", refresh=True)
        best, record = decayed_training(
            build_model(model_config, seed), objectives, 0, seed, PRETRAIN_PHASE,
            samples0["train"], samples0["val"], jnp.zeros((vocab_size, size[1])),
            steps=config.pretrain_steps,
            schedule=cosine_decay(config.student_lr, config.pretrain_steps, config.warmup_steps),
            batch_size=config.batch_size, eval_every=config.pretrain_eval_every,
            weight_decay=config.weight_decay)
        train.save_checkpoint(pretrained_path, {"best": best}, record)
      bar.update()

      def pretrained(factory=factory, pretrained_path=pretrained_path):
        return factory.load(pretrained_path)

      def base_metrics(sample_key=sample_key, pretrained=pretrained):
        model, meta = pretrained()
        own = sample_rows(model, config.student_samples, config.seq_len, separator, sample_key)
        return dict(exact_metrics(target, model, samples["held_out"], own, unit_head),
                    finite=True, digest=state_digest(nnx.state(model)),
                    pretraining={k: meta[k] for k in ("steps", "best_val_nll", "val_curve",
                                                     "val_steps", "seconds")})

      models = {"base": cached_json(f"{stem}_base.json", base_metrics)}
      bar.update()
      for name in names:
        index = all_names.index(name)
        bar.set_postfix_str(f"{regime} s{seed} {name}", refresh=True)

        def tuned(index=index, name=name, sample_key=sample_key, pretrained=pretrained,
                  stem=stem, seed=seed, factory=factory, steps=steps):
          model, _ = pretrained()
          start_digest = state_digest(nnx.state(model))
          cost = jnp.array(model.head, copy=True)   # frozen copy of the pretrained head
          best, record = decayed_training(
              model, objectives, index, seed, FINETUNE_PHASE, samples["train"], samples["val"],
              cost, steps=steps, schedule=linear_decay(config.finetune_lr, steps),
              batch_size=config.batch_size, eval_every=config.finetune_eval_every,
              weight_decay=config.weight_decay)
          if not record["finite"]:
            return dict(record, start_digest=start_digest)
          tuned_model = factory.of(best)
          if name == "ce":
            train.save_checkpoint(f"{stem}_ce.npz", {"best": best}, record)
          own = sample_rows(tuned_model, config.student_samples, config.seq_len, separator,
                            sample_key)
          return dict(exact_metrics(target, tuned_model, samples["held_out"], own, unit_head),
                      **record, start_digest=start_digest)

        models[name] = cached_json(f"{stem}_{name}.json", tuned)
        bar.update()
      per_seed.append(models)

      def ce_model(stem=stem, factory=factory):
        return factory.load(f"{stem}_ce.npz")[0]

      def tempered(models=models, sample_key=sample_key, ce_model=ce_model):
        if not models["ce"].get("finite", True) or "forward_kl" not in models["ce"]:
          return {}
        model = ce_model()
        points = temperature.curve(target, model, samples["held_out"], separator, sample_key,
                                   config.student_samples, config.seq_len, unit_head,
                                   config.temperatures)
        matched = {}
        for name in names[1:]:
          if "entropy_q_student_prefixes" not in models[name]:
            continue
          t, inside = temperature.matching_temperature(
              points, models[name]["entropy_q_student_prefixes"])
          at = temperature.tempered_metrics(target, model, samples["held_out"], separator,
                                            sample_key, config.student_samples, config.seq_len,
                                            unit_head, t)
          matched[name] = dict(at, inside_grid=inside,
                               target_entropy=models[name]["entropy_q_student_prefixes"])
        return {"curve": points, "matched": matched}

      curve_path = f"{stem}_ce_temperature.json"
      stored = outputs.read_json(curve_path) if os.path.exists(curve_path) else None
      grid = sorted(float(t) for t in config.temperatures)
      if stored is None or stored and (
          [p["temperature"] for p in stored["curve"]] != grid
          or not {n for n in names[1:] if "entropy_q_student_prefixes" in models[n]}
          <= set(stored["matched"])):  # another grid, or objectives added since: redo
        stored = tempered()
        outputs.write_json(curve_path, stored, indent=None)
      curves.append(stored)
      bar.update()

      def longer(models=models, sample_key=sample_key, pretrained=pretrained, seed=seed,
                 factory=factory):
        selected = models["ce"].get("steps", 0)
        if not selected or "forward_kl" not in models["ce"]:
          return {}
        model, _ = pretrained()
        cost = jnp.array(model.head, copy=True)
        last, record = decayed_training(
            model, objectives, 0, seed, FINETUNE_PHASE, samples["train"], samples["val"], cost,
            steps=2 * selected, schedule=linear_decay(config.finetune_lr, 2 * selected),
            batch_size=config.batch_size, eval_every=config.finetune_eval_every,
            weight_decay=config.weight_decay, keep="last")
        final = factory.of(last)
        own = sample_rows(final, config.student_samples, config.seq_len, separator, sample_key)
        return dict(exact_metrics(target, final, samples["held_out"], own, unit_head), **record)

      continued.append(cached_json(f"{stem}_ce_continued.json", longer))
      bar.update()
    out["per_regime"][regime] = per_seed
    out["temperature"][regime] = curves
    out["continued"][regime] = continued
    out["finetune"][regime] = {
        "student": {"d_model": size[1], "layers": size[2], "heads": size[3]},
        "epochs": size[4],
        "kl_p_p0": shift_metrics["kl_p_p0"], "seeds": len(per_seed),
        "steps": steps, "pretrain_steps": config.pretrain_steps,
        "objectives": list(names), "regimes": [regime]}
  bar.close()
  return out
