"""Training throughput: our trainer vs Keras ``model.fit`` vs the in-memory upper bound.

One process, one data set, one model (an MLP 20 features -> 128 -> 64 -> 10, batch 256 by
default), measured in the same run, in many short alternating rounds. Within a round the paths
run back to back, (a), (c) and (s) next to each other ((c) in the middle) in alternating
order, so the headline is the median over rounds of the per-round ratio: on this shared 2-core
box one path's throughput swings by 20-30 % from second to second, and a ratio of two paths
measured apart (best against best) swings as much:

  (a) our trainer reading the TFRecords: what ``tfpipes train --cache`` runs: the split is
      parsed once into memory, then each step gathers its shuffled batch itself
      (``Trainer.train_steps`` on ``InMemoryData``), K steps per ``tf.function`` call;
  (b) Keras ``model.fit`` on the same batches as a tf.data pipeline
      (``InMemoryData.dataset()``), same model, optimizer and loss (defaults:
      ``steps_per_execution=1``, ``jit_compile="auto"``); (b') the same with
      ``steps_per_execution=K``, for reference;
  (c) our step fed from in-memory tensors: the same ``Trainer.replica_step`` in the same
      ``tf.range`` loop, batches taken from a tensor already in memory (no tf.data at all).

Also shown: (s) our trainer with the streaming pipeline (no --cache) on a data set in the
default record layout (blocks of rows, column by column), (s-rows) the same on the per-row
layout (``--layout rows``, what streaming read before the block layout), (b-s) ``model.fit`` on
that same streaming pipeline (ratio (s)/(b-s)), where the streaming input's time goes (no
training: (p) the whole pipeline, (r) reading + shuffling + batching the serialized records,
(q) ``parse_example`` of one batch over and over), and the end-to-end
``tfpipes.training.train`` wall time. Steady state: every path is traced and warmed up first.

The headline lines (``name: value``): ``streaming/in-memory`` (s)/(c), ``streaming-rows/in-memory``
(s-rows)/(c), ``cache/in-memory`` (a)/(c), ``ours/fit`` (a)/(b), each the median of the per-round
ratios; and ``shuffle-tv/<layout>``: on a data set written in label order, the mean
total-variation distance between each training batch's label histogram and the split's
(lower is better; ``shuffle-tv/ideal`` is the uniform permutation of --cache, for scale).

  python bench/train.py                       # CPU, the issue's setting
  python bench/train.py --hidden 1024,1024 --batch-size 4096 --mixed-precision --jit   # GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--hidden", default="128,64")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=500, help="timed steps per round and path")
    p.add_argument("--steps-per-loop", type=int, default=50)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--jit", action="store_true", help="XLA auto-clustering (GPU)")
    p.add_argument("--nondeterministic", action="store_true", help="no op determinism")
    p.add_argument("--data-dir", default="", help="reuse/keep the data set here")
    p.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end train() run")
    p.add_argument(
        "--paths", default="a,b,b',c,s,s-rows,b-s,p,r,q", help="which measurements to run"
    )
    p.add_argument("--tv-rows", type=int, default=50_000, help="rows of the sorted data set")
    p.add_argument("--tv-batches", type=int, default=200, help="batches the shuffle TV averages")
    return p.parse_args()


def _make_data(args, work: str, layout: str, rows: int = 0, sort: bool = False) -> str:
    """The benchmark data set in ``layout`` (reused from --data-dir when there)."""
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.sample_data import write_float_csv

    name = f"data-{layout}" + ("-sorted" if sort else "")
    data = os.path.join(args.data_dir or work, name)
    if os.path.exists(os.path.join(data, "manifest.json")):
        return data
    csv = os.path.join(work, f"bench{'-sorted' if sort else ''}.csv")
    if not os.path.exists(csv):
        write_float_csv(csv, rows or args.rows, args.features, args.classes, seed=0, sort=sort)
    preprocess(
        PreprocessConfig(
            csv, data, "label", num_shards=10, eval_fraction=0.05, progress=False, layout=layout
        )
    )
    return data


def _shuffle_tv(args, work: str) -> dict:
    """Mean TV distance of the batches' label mix from the split's, per layout, on a data set
    written in label order (the same rows in every layout)."""
    import numpy as np

    from tfpipes.input_pipeline import label_mix_distance, load_in_memory, make_dataset
    from tfpipes.layout import RECORD_LAYOUTS
    from tfpipes.manifest import verify_dataset
    from tfpipes.schema import load_schema

    out = {}
    for layout in RECORD_LAYOUTS:
        data = _make_data(args, work, layout, rows=args.tv_rows, sort=True)
        m, schema = verify_dataset(data), load_schema(data)
        ds = make_dataset(data, m, "train", schema, args.batch_size, training=True, seed=1)
        mem = load_in_memory(data, m, "train", schema, args.batch_size, seed=1)
        ref = np.bincount(mem.labels.numpy(), minlength=args.classes) / mem.rows
        out[layout] = label_mix_distance(ds.take(args.tv_batches), args.classes, ref)
        if "ideal" not in out:
            ideal = mem.dataset().take(args.tv_batches)
            out["ideal"] = label_mix_distance(ideal, args.classes, ref)
    return out


def main() -> int:
    args = _args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from tfpipes import strategy as strategy_lib
    from tfpipes.input_pipeline import load_in_memory, make_dataset
    from tfpipes.layout import read_stats
    from tfpipes.manifest import verify_dataset
    from tfpipes.schema import load_schema
    from tfpipes.training import TrainConfig, train
    from tfpipes.training.default_runner import cache_device
    from tfpipes.training.tf_settings import configure_tensorflow
    from tfpipes.training.trainer import Trainer

    hidden = tuple(int(h) for h in args.hidden.split(","))
    work = tempfile.mkdtemp(prefix="bench-train-")
    try:
        from tfpipes.layout import DEFAULT_RECORD_LAYOUT

        data = _make_data(args, work, DEFAULT_RECORD_LAYOUT)
        data_rows = _make_data(args, work, "rows")
        cfg = TrainConfig(
            data,
            os.path.join(work, "model"),
            hidden=hidden,
            batch_size=args.batch_size,
            steps_per_loop=args.steps_per_loop,
            cache=True,
            mixed_precision=args.mixed_precision,
            jit=args.jit,
            deterministic=False if args.nondeterministic else None,
            progress=False,
        )
        deterministic = configure_tensorflow(cfg)
        strategy = strategy_lib.create_strategy(strategy_lib.resolve_from_environment())
        manifest = verify_dataset(data)
        schema = load_schema(data)
        stats = read_stats(data)
        B, K, S = args.batch_size, args.steps_per_loop, args.steps

        def trainer():
            keras.utils.set_random_seed(0)
            return Trainer(
                strategy, cfg.model_spec, schema, stats, "adam", 1e-3, B,
                mixed_precision=args.mixed_precision,
            )  # fmt: skip

        # (a): our trainer on the TFRecords, parsed once into memory (what train() does with
        # --cache and one replica); (s): the streaming pipeline.
        t_load = time.perf_counter()
        cached = load_in_memory(
            data, manifest, "train", schema, B, seed=cfg.seed, device=cache_device(manifest)
        )
        load_s = time.perf_counter() - t_load
        # The same batches through tf.data, for (b) and (c); tf.data runs on the host.
        on_host = cached
        if cache_device(manifest) != "/cpu:0":
            on_host = load_in_memory(data, manifest, "train", schema, B, seed=cfg.seed)
        ds_cached = on_host.dataset()
        ours = trainer()
        ours_s = trainer()

        manifest_rows = verify_dataset(data_rows)
        ours_sr = trainer()

        def stream(root=data, m=manifest):
            # A new iterator for each round: a live one would go on filling its buffers in
            # the background while the other paths run, and start its next round ahead.
            return iter(make_dataset(root, m, "train", schema, B, training=True, seed=1))

        def run_ours(tr, it):
            tr.train_steps(it, K)  # warm (traced on the first call)
            t = time.perf_counter()
            for _ in range(S // K):
                tr.train_steps(it, K)
            return (S // K) * K * B / (time.perf_counter() - t)

        # (c): the same step on batches already in memory.
        mem = trainer()
        nb = 64
        batches = list(ds_cached.take(nb))
        with tf.device(cache_device(manifest)):  # where (a) keeps its data too
            mem_x = {k: tf.stack([b[0][k] for b in batches]) for k in batches[0][0]}
            mem_y = tf.stack([b[1] for b in batches])

        @tf.function
        def mem_loop(n):
            total = tf.constant(0.0)
            for i in tf.range(n):
                j = tf.cast(i % nb, tf.int32)
                batch = ({k: v[j] for k, v in mem_x.items()}, mem_y[j])
                per_replica = strategy.run(mem.replica_step, args=(batch,))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            return total

        def run_mem():
            mem_loop(tf.constant(K, tf.int64))
            t = time.perf_counter()
            for _ in range(S // K):
                float(mem_loop(tf.constant(K, tf.int64)))
            return (S // K) * K * B / (time.perf_counter() - t)

        # (b): Keras fit on the same tf.data input.
        def fit_model(steps_per_execution: int):
            from tfpipes.models import build_model

            keras.utils.set_random_seed(0)
            prev = keras.config.dtype_policy()
            if args.mixed_precision:
                gpu = bool(tf.config.list_logical_devices("GPU"))
                keras.config.set_dtype_policy("mixed_float16" if gpu else "mixed_bfloat16")
            with strategy.scope():
                model = build_model(cfg.model_spec, schema, stats)
                keras.config.set_dtype_policy(prev)
                model.compile(
                    optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    steps_per_execution=steps_per_execution,
                )
            return model

        fit_b, fit_b2 = fit_model(1), fit_model(K)

        ds_stream = make_dataset(data, manifest, "train", schema, B, training=True, seed=cfg.seed)
        fit_bs = fit_model(1)

        def run_fit(model, ds=ds_cached):
            # One fit() call per round; the clock starts after 2K warm-up steps, so neither
            # the new iterator that fit() makes (a refilled shuffle buffer, streaming) nor
            # tracing counts against Keras.
            warm, total = 2 * K, 2 * K + (S // K) * K
            mark = {}

            class Clock(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    if not mark and batch + 1 >= warm:
                        mark.update(t=time.perf_counter(), done=batch + 1)

            model.fit(ds, steps_per_epoch=total, epochs=1, verbose=0, callbacks=[Clock()])
            return (total - mark["done"]) * B / (time.perf_counter() - mark["t"])

        # The streaming input alone, no training: (p) the whole pipeline, (r) its reading,
        # shuffling and batching of serialized records, (q) its parse of one batch, repeated.
        from tfpipes.input_pipeline import _parse_fn, _records

        # (r), (q): of the per-row layout, whose records are one row each.
        files = [os.path.join(data_rows, f) for f in manifest_rows.shard_paths("train")]
        records = _records(files, manifest_rows.compression or None, None)
        ds_r = records.shuffle(10_000, seed=1).repeat().batch(B, drop_remainder=True)
        one = next(iter(records.batch(B)))
        ds_q = tf.data.Dataset.from_tensors(one).repeat().map(_parse_fn(schema)).prefetch(1)

        def run_input(it):
            for _ in range(K):
                next(it)
            t = time.perf_counter()
            for _ in range(S):
                next(it)
            return S * B / (time.perf_counter() - t)

        paths = {
            "a": lambda: run_ours(ours, cached),
            "c": run_mem,
            "b": lambda: run_fit(fit_b),
            "b2": lambda: run_fit(fit_b2),
            "s": lambda: run_ours(ours_s, stream()),
            "sr": lambda: run_ours(ours_sr, stream(data_rows, manifest_rows)),
            "bs": lambda: run_fit(fit_bs, ds_stream),
            "p": lambda: run_input(stream()),
            "r": lambda: run_input(iter(ds_r)),
            "q": lambda: run_input(iter(ds_q)),
        }
        chosen = {
            p.strip().replace("'", "2").replace("-rows", "r").replace("-", "")
            for p in args.paths.split(",")
        }
        paths = {k: v for k, v in paths.items() if k in chosen}
        rounds: list[dict] = []
        for r in range(args.rounds):
            rounds.append({})
            # (c) between the two paths compared with it, (s-rows) next: a then c then s,
            # then the reverse: a slow drift favours neither side.
            head = [k for k in ("sr", "a", "c", "s") if k in paths]
            if r % 2:
                head.reverse()
            order = head + [k for k in paths if k not in head]
            for name in order:
                eps = rounds[-1][name] = paths[name]()
                label = {"b2": "b'", "bs": "b-s", "sr": "s-rows"}.get(name, name)
                print(f"round {r + 1} ({label}) {eps:12,.0f} examples/s", flush=True)

        def stat(name, pick):
            xs = sorted(r[name] for r in rounds if name in r)
            return pick(xs) if xs else float("nan")

        keys = ("a", "b", "b2", "c", "s", "sr", "bs", "p", "r", "q")
        best = {k: stat(k, max) for k in keys}
        med = {k: stat(k, statistics.median) for k in keys}

        e2e = None
        if not args.skip_e2e:
            t = time.perf_counter()
            steps = max(S, 1000)
            res = train(dataclasses_replace(cfg, train_steps=steps, checkpoint_every=steps))
            e2e = (time.perf_counter() - t, res.examples_per_second, steps)

        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        print()
        print(
            f"device: {', '.join(gpus) or f'CPU ({os.cpu_count()} cores)'}; TF {tf.__version__}; "
            f"MLP {args.features}->{'->'.join(map(str, hidden))}->{args.classes}, batch {B}, "
            f"{K} steps/loop, mixed precision {'on' if args.mixed_precision else 'off'}, "
            f"jit {'on' if args.jit else 'off'}, deterministic {deterministic}; "
            f"{S} timed steps per path and round, {args.rounds} rounds"
        )
        print(f"{'':40}{'median':>12}{'best':>12}  examples/s")
        for key, name in (
            ("a", "(a) our trainer, TFRecords (--cache)"),
            ("b", "(b) Keras model.fit, same tf.data"),
            ("b2", f"(b') model.fit, steps_per_execution={K}"),
            ("c", "(c) our step, in-memory tensors"),
            ("s", "(s) our trainer, streaming (no cache)"),
            ("sr", "(s-rows) the same, per-row layout"),
            ("bs", "(b-s) model.fit, the streaming tf.data"),
            ("p", "(p) streaming input alone, no step"),
            ("r", "(r) s-rows' read+shuffle+batch"),
            ("q", "(q) s-rows' parse_example alone"),
        ):
            if key in paths:
                print(f"{name:40}{med[key]:12,.0f}{best[key]:12,.0f}")
        print(f"parse once into memory: {load_s:.2f} s for {manifest.rows.get('train', '?')} rows")
        if e2e:
            print(
                f"end to end: tfpipes.training.train, {e2e[2]} steps: {e2e[0]:.1f} s wall "
                f"(TensorFlow setup, load, trace, checkpoint, eval included), "
                f"{e2e[1]:,.0f} examples/s in steps"
            )

        def median_ratio(x, y):
            # Within one round the paths ran back to back, under about the same load.
            ratios = [r[x] / r[y] for r in rounds if x in r and y in r]
            return statistics.median(ratios) if ratios else float("nan")

        print("ratios: the median of the per-round ratios, and best/best")
        goals = {("a", "c"): 0.9, ("a", "b"): 1.2, ("a", "b2"): None, ("s", "bs"): None}
        names = {"b2": "b'", "bs": "b-s"}
        for (x, y), goal in goals.items():
            if x not in paths or y not in paths:
                continue
            name = f"({x})/({names.get(y, y)})"
            m = median_ratio(x, y)
            verdict = ""
            if goal is not None:
                verdict = f"  goal >= {goal}: {'met' if m >= goal else 'NOT met'}"
            print(f"{name:9} = {m:.2f} (best/best {best[x] / best[y]:.2f}){verdict}")
        headline = {
            "streaming/in-memory": ("s", "c", 0.8),
            "streaming-rows/in-memory": ("sr", "c", None),
            "cache/in-memory": ("a", "c", None),
            "ours/fit": ("a", "b", None),
        }
        for name, (x, y, goal) in headline.items():
            if x in paths and y in paths:
                m = median_ratio(x, y)
                verdict = (
                    ""
                    if goal is None
                    else f"  (goal >= {goal}: {'met' if m >= goal else 'NOT met'})"
                )
                print(f"{name}: {m:.2f}{verdict}")
        tv = _shuffle_tv(args, work)
        for layout, value in tv.items():
            print(f"shuffle-tv/{layout}: {value:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


if __name__ == "__main__":
    sys.exit(main())
