"""Trainer(mesh=...): data parallelism over fake CPU devices gives the results of one device."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import optax
import pytest

import nnx
from trainer import Trainer


def _run(code, devices, *argv, flags="", **env_vars):
    xla_flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}" + flags
    env = {**os.environ, **env_vars, "XLA_FLAGS": xla_flags}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# a model with BatchNorm and Dropout, shared by the scripts (HOSTS joins jax.distributed first)
BATCHNORM_NET = textwrap.dedent(
    """
    import json
    import jax, numpy as np, optax
    import nnx
    from trainer import Trainer

    class Net(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(params=0, dropout=1)
            # no bias before BatchNorm: its gradient is zero up to rounding, which Adam would
            # turn into steps of either sign, different on one device and on four
            self.l1 = nnx.Linear(4, 16, use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(16, rngs=rngs)
            self.drop = nnx.Dropout(0.25, rngs=rngs)
            self.l2 = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))

    """
)

RUN = BATCHNORM_NET + textwrap.dedent(
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=100).astype(np.int32)
    import grain

    records = [(x[i], y[i]) for i in range(96)]
    out = {"devices": len(jax.devices())}
    for name, mesh in (("one", None), ("four", "auto")):
        trainer = Trainer(Net(), optax.adam(1e-2), metrics=("accuracy",), mesh=mesh)
        hist = trainer.fit(x, y, batch_size=8, epochs=2, validation_split=0.2, verbose=0)
        pipeline = grain.MapDataset.source(records).shuffle(seed=3).batch(8)  # fed batches
        hist2 = trainer.fit(pipeline, epochs=2, verbose=0)
        preds = trainer.predict(x, batch_size=8, verbose=0)
        kernel = trainer.model.l1.kernel.value
        out[name] = {
            "history": hist.history, "history2": hist2.history,
            "params": [np.asarray(v).tolist() for v in jax.tree.leaves(nnx.state(trainer.model, nnx.Param))],
            "stats": np.asarray(trainer.model.bn.mean.value).tolist(),
            "preds": np.asarray(preds).tolist(),
            "kernel_devices": len(kernel.sharding.device_set),
        }
    try:
        Trainer(Net(), optax.sgd(0.1), mesh="auto").fit(x, y, batch_size=6, verbose=0)
    except ValueError as error:
        out["bad_batch"] = str(error)
    print(json.dumps(out))
    """
)


def test_data_parallel_fit_over_four_devices_matches_one_device():
    out = _run(RUN, 4)
    one, four = out["one"], out["four"]
    assert out["devices"] == 4 and four["kernel_devices"] == 4 and one["kernel_devices"] == 1
    assert "batch_size=6 does not divide over the 4 devices of the mesh axis 'data'" in out["bad_batch"]
    for key in ("history", "history2"):
        assert one[key].keys() == four[key].keys()
        for k in one[key]:
            np.testing.assert_allclose(four[key][k], one[key][k], rtol=1e-5, atol=1e-6)
    for a, b in zip(four["params"], one["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(four["stats"], one["stats"], rtol=1e-5, atol=1e-6)  # global statistics
    np.testing.assert_allclose(four["preds"], one["preds"], rtol=1e-5, atol=1e-5)


def test_mesh_arguments_are_checked():
    import jax
    from jax.sharding import Mesh

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="expects None, 'auto' or a jax.sharding.Mesh"):
        Trainer(model, optax.sgd(0.1), mesh="everything")
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match=r"data_axis='data'\) is not an axis of the mesh, whose axes are \('batch',\)"):
        Trainer(model, optax.sgd(0.1), mesh=mesh)
    assert Trainer(model, optax.sgd(0.1), mesh=mesh, data_axis="batch")._placement.data_size == 1


# a two-layer MLP whose first kernel is split over the mesh's "model" axis
SHARDED_NET = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    from jax.sharding import Mesh
    import callbacks, nnx
    from trainer import Trainer

    class Net(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
            self.l1 = nnx.Linear(4, 8, kernel_init=init, rngs=rngs)
            self.l2 = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))
    """
)

MODEL_PARALLEL = SHARDED_NET + textwrap.dedent(
    """
    class Spec(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.seen = str(getattr(self.model.l1.kernel.value.sharding, "spec", None))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=64).astype(np.int32)
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))
    out = {}
    for name, m in (("one", None), ("mesh", mesh)):
        spec = Spec()
        trainer = Trainer(Net(), optax.adam(1e-2), mesh=m, steps_per_execution=1)
        hist = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[spec])
        kernel = trainer.model.l1.kernel.value
        mu = trainer.optimizer_state()[0][0].mu["l1"]["kernel"]
        out[name] = {
            "loss": hist.history["loss"], "during": spec.seen,
            "after": str(getattr(kernel.sharding, "spec", None)),
            "shard_shape": list(kernel.sharding.shard_shape(kernel.shape)),
            "mu": str(getattr(mu.sharding, "spec", None)),
            "params": [np.asarray(v).tolist() for v in jax.tree.leaves(nnx.state(trainer.model, nnx.Param))],
        }
    print(json.dumps(out))
    """
)


def test_a_data_and_model_mesh_shards_parameters_by_their_metadata():
    out = _run(MODEL_PARALLEL, 4)
    mesh = out["mesh"]
    # the kernel is split over the model axis during and after fit, and so is Adam's state
    assert mesh["during"] == mesh["after"] == mesh["mu"] == "P(None, 'model')"
    assert mesh["shard_shape"] == [4, 4]
    np.testing.assert_allclose(mesh["loss"], out["one"]["loss"], rtol=1e-5)
    for a, b in zip(mesh["params"], out["one"]["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


CHECKPOINT = SHARDED_NET + textwrap.dedent(
    """
    mode, directory = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=64).astype(np.int32)
    n = len(jax.devices())
    mesh = None if n == 1 else Mesh(np.asarray(jax.devices()).reshape(n // 2, 2), ("data", "model"))
    trainer = Trainer(Net(), optax.adam(1e-2), mesh=mesh)
    if mode == "save":
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
        trainer.save(directory)
    else:
        trainer.restore(directory)
    kernel = trainer.model.l1.kernel.value
    spec = str(getattr(kernel.sharding, "spec", None))
    params = [np.asarray(v).tolist() for v in jax.tree.leaves(nnx.state(trainer.model, nnx.Param))]
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)  # and it trains on from there
    after = [np.asarray(v).tolist() for v in jax.tree.leaves(nnx.state(trainer.model, nnx.Param))]
    print(json.dumps({"step": trainer.step, "params": params, "after": after, "spec": spec, "n": n}))
    """
)


@pytest.mark.parametrize("saved_on, restored_on", [(4, (1, 2)), (1, (4,))])
def test_a_checkpoint_restores_on_a_mesh_of_another_shape(tmp_path, saved_on, restored_on):
    saved = _run(CHECKPOINT, saved_on, "save", str(tmp_path / "ckpt"))
    for devices in restored_on:
        restored = _run(CHECKPOINT, devices, "load", str(tmp_path / "ckpt"))
        assert restored["step"] == saved["step"] == 16  # 8 steps restored, 8 more
        if devices > 1:  # read straight into the kernel's shards, before any step
            assert restored["spec"] == "P(None, 'model')"
        for a, b in zip(restored["params"], saved["params"], strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(restored["after"], saved["after"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


SHARDED_CREATION = textwrap.dedent(
    """
    import json
    import jax, numpy as np, optax
    import nnx
    from trainer import Trainer

    class Net(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
            self.l1 = nnx.Linear(4, 8, kernel_init=init, rngs=rngs)
            self.l2 = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))

    mesh = jax.make_mesh((2, 2), ("data", "model"))
    with jax.set_mesh(mesh):  # created sharded: the kernel never lives on one device
        model = Net(nnx.Rngs(0))
        compiled = nnx.jit(lambda: Net(nnx.Rngs(0)))()  # or created by one compiled program
    created = model.l1.kernel.value.sharding.shard_shape(model.l1.kernel.value.shape)
    assert compiled.l1.kernel.value.sharding.shard_shape((4, 8)) == created
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=32).astype(np.int32)
    Trainer(model, optax.adam(1e-2), mesh=mesh).fit(x, y, batch_size=8, epochs=1, verbose=0)
    kernel = model.l1.kernel.value
    print(json.dumps({"created": list(created), "after": list(kernel.sharding.shard_shape(kernel.shape))}))
    """
)


def test_a_model_created_sharded_stays_sharded():
    out = _run(SHARDED_CREATION, 4)
    assert out["created"] == out["after"] == [4, 4]


def test_a_run_killed_on_four_devices_resumes_exactly(tmp_path):

    import _backup_run

    script = _backup_run.__file__
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}

    def run(*argv, **kwargs):
        return subprocess.run([sys.executable, script, *argv, "--mesh", "auto"], env=env, capture_output=True,
                              text=True, timeout=300, **kwargs)

    straight = run(str(tmp_path / "straight"), "--out", str(tmp_path / "straight.npz"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    backup_dir, ready = tmp_path / "backup", tmp_path / "ready"
    killed = subprocess.Popen(
        [sys.executable, script, str(backup_dir), "--block-after", "7", "--ready", str(ready), "--mesh", "auto"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _backup_run.kill_when_ready(killed, ready, 240)
    resumed = run(str(backup_dir), "--out", str(tmp_path / "resumed.npz"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert int(got["restored"]) == 6
    for key in want.files:
        if key != "restored":
            np.testing.assert_array_equal(got[key], want[key])


HOSTS = textwrap.dedent(
    """
    import json, sys
    import jax
    pid, port = int(sys.argv[1]), sys.argv[2]
    if pid >= 0:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    """
) + BATCHNORM_NET + textwrap.dedent(
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=64).astype(np.int32)
    trainer = Trainer(Net(), optax.adam(1e-2), mesh="auto")
    hist = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    # a dataset: each process reads its own share (4 rows of each global batch of 8)
    import grain

    records = [(x[i], y[i]) for i in range(64)]
    if jax.process_count() > 1:
        mine = grain.MapDataset.source(records)[jax.process_index()::jax.process_count()].batch(4)
    else:  # the same global batches, put together in one process
        halves = [records[0::2], records[1::2]]
        mine = [tuple(np.stack(part) for part in zip(*(halves[0][i:i + 4] + halves[1][i:i + 4])))
                for i in range(0, 32, 4)]
    hist2 = trainer.fit(mine, epochs=1, verbose=0)
    preds = trainer.predict(x, batch_size=8, verbose=0)
    params = [np.asarray(v).tolist() for v in jax.tree.leaves(nnx.state(trainer.model, nnx.Param))]
    print(json.dumps({"devices": len(jax.devices()), "processes": jax.process_count(),
                      "loss": hist.history["loss"] + hist2.history["loss"],
                      "params": params, "preds_shape": list(np.shape(preds)), "preds0": np.asarray(preds)[:2].tolist()}))
    """
)


def test_two_processes_joined_with_jax_distributed_train_like_one():
    import json
    import socket

    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = str(probe.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    hosts = [
        subprocess.Popen([sys.executable, "-c", HOSTS, str(pid), port], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for pid in (0, 1)
    ]
    outs = []
    for host in hosts:
        stdout, stderr = host.communicate(timeout=300)
        assert host.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    # one process with two (fake) devices: the same mesh, the same global batches
    one = _run(HOSTS, 2, "-1", "0")
    assert [o["processes"] for o in outs] == [2, 2] and one["processes"] == 1
    for out in outs:
        np.testing.assert_allclose(out["loss"], one["loss"], rtol=1e-6)
        for a, b in zip(out["params"], one["params"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert out["preds_shape"] == [64, 3]  # predict gathers every process's rows, in order
        np.testing.assert_allclose(out["preds0"], one["preds0"], rtol=1e-5, atol=1e-6)


LOGICAL_RULES = textwrap.dedent(
    """
    import jax, numpy as np, optax
    import nnx
    from trainer import Trainer
    from jax.sharding import Mesh
    class Net(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
            self.l1 = nnx.Linear(4, 8, kernel_init=init, rngs=rngs)
            self.l2 = nnx.Linear(8, 3, rngs=rngs)
        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32); y = rng.integers(0, 3, size=32).astype(np.int32)
    model = Net(nnx.Rngs(0))
    with nnx.logical_axis_rules((("embed", None), ("mlp", "model"))):
        Trainer(model, optax.adam(1e-2), mesh=mesh).fit(x, y, batch_size=8, verbose=0)
    k = model.l1.kernel.value
    import json
    print(json.dumps({"spec": str(k.sharding.spec), "shard": list(k.sharding.shard_shape(k.shape))}))
    """
)


def test_logical_axis_names_are_mapped_by_the_rules_in_effect():
    out = _run(LOGICAL_RULES, 4)
    assert out == {"spec": "P(None, 'model')", "shard": [4, 4]}


LOCAL_BATCHES = textwrap.dedent(
    """
    import glob, json, os
    import jax, numpy as np, optax
    import nnx
    from trainer import Trainer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 24)).astype(np.float32)
    y = rng.integers(0, 3, size=512).astype(np.int32)
    trainer = Trainer(nnx.Linear(24, 3, rngs=nnx.Rngs(0)), optax.sgd(0.1), mesh="auto", steps_per_execution=1)
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
    steps = [f for f in glob.glob(os.path.join(os.environ["DUMP"], "*after_optimizations.txt"))
             if "_lambda" in f]
    text = "\\n".join(open(f).read() for f in steps)
    print(json.dumps({"programs": len(steps), "all_gathers": text.count(" all-gather("),
                      "all_reduces": text.count(" all-reduce("), "local_rows": "f32[32,4,24]" in text}))
    """
)


def test_each_step_reads_its_batch_where_it_lies(tmp_path):
    """Array data is laid out in batch-sized blocks split over the devices: the compiled step
    computes on its devices' rows (one all-reduce of the gradients), and never gathers the
    dataset to every device."""
    flags = f" --xla_dump_to={tmp_path} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*_lambda.* --xla_dump_hlo_pass_re=NONE"
    out = _run(LOCAL_BATCHES, 4, flags=flags, DUMP=str(tmp_path))
    assert out["programs"] >= 1 and out["local_rows"]  # each device holds (32 blocks, 4 rows)
    assert out["all_gathers"] == 0 and out["all_reduces"] >= 1


PIPELINED = textwrap.dedent(
    """
    import json
    import jax, numpy as np, optax
    import nnx
    from trainer import Trainer

    class MLP(nnx.Module):
        def __init__(self):
            self.l1 = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
            self.l2 = nnx.Linear(32, 10, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=4096).astype(np.int32)
    trainer = Trainer(MLP(), optax.adam(1e-3), mesh="auto", steps_per_execution=1)
    hist = trainer.fit(x, y, batch_size=32, epochs=2, verbose=0)
    print(json.dumps({"loss": hist.history["loss"]}))
    """
)


def test_many_queued_steps_on_a_cpu_mesh_do_not_hang():
    """XLA's CPU client can hang when many calls holding collectives are queued at once (the
    devices share one thread pool); on a CPU mesh the Trainer waits for each call. Optimized
    code (the default outside this suite) hung here without that."""
    out = _run(PIPELINED, 4, flags=" --xla_backend_optimization_level=2")
    assert len(out["loss"]) == 2 and all(np.isfinite(out["loss"]))
