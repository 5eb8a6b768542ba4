"""Where the Trainer's arrays live: the default device, or a ``jax.sharding.Mesh`` whose data
axis splits every batch (data parallelism through JAX's own SPMD partitioning), over the devices
of one host or of several joined with ``jax.distributed.initialize()``: array data is given to
every process whole (each places its devices' rows), batches from a dataset are each process's
own part of the global batch (``jax.make_array_from_process_local_data``).

With a mesh, array datasets are laid out in batch-sized blocks, each split over the data axis
(so a step's batch is already where the step computes on it), fed batches are placed split the
same way (stacked blocks along their batch axis), and everything else (the
model's arrays, the optimizer state, the running metrics) is left to the compiled steps, which
keep it replicated unless the arrays come in sharded (a model created sharded keeps its
shardings). Reductions in the steps (the mean loss, BatchNorm's batch statistics, the metrics)
are then over the global batch, as on one device.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

import nnx
from nnx.spmd import get_var_pspec
from trainer.data import ArrayData


class Placement:
    """The placement of one Trainer.

    Args:
      mesh: None (one device), ``"auto"`` (a 1-D mesh over all devices, its axis named
        ``data_axis``) or a ``jax.sharding.Mesh`` holding ``data_axis``.
      data_axis: the mesh axis that splits the batch.
    """

    def __init__(self, mesh: Any = None, data_axis: str = "data"):
        if mesh == "auto":
            mesh = Mesh(np.asarray(jax.devices()), (data_axis,))
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"Trainer(mesh=...) expects None, 'auto' or a jax.sharding.Mesh, got {type(mesh).__name__}.")
        if mesh is not None and any(t != AxisType.Auto for t in getattr(mesh, "axis_types", ())):
            # the steps leave the partitioning of what they compute to XLA (jax's "Auto" axes);
            # a mesh of explicit axes (jax.make_mesh's default) is used with the same devices
            mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
        if mesh is not None and data_axis not in mesh.axis_names:
            raise ValueError(
                f"Trainer(data_axis={data_axis!r}) is not an axis of the mesh, whose axes are "
                f"{tuple(mesh.axis_names)}; pass data_axis=... naming the one that splits batches."
            )
        self.mesh, self.data_axis = mesh, data_axis
        self.data_size = 1 if mesh is None else int(mesh.shape[data_axis])
        # XLA's CPU client runs the devices of a mesh on one shared thread pool: with several
        # calls holding collectives queued, devices waiting in one call's all-reduce can starve
        # a device still finishing the previous call, and the process hangs. Each call is then
        # waited for before the next is dispatched (CPU meshes are for tests; accelerators
        # queue calls per device and are not affected).
        self.serial = mesh is not None and mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def model_arrays(self, spec: Any, params: Any, others: tuple) -> tuple[Any, tuple]:
        """The model's arrays placed by their Variables' sharding metadata (``with_partitioning``,
        ``sharding=``, logical axis rules applied); replicated without metadata. Arrays already
        sharded on this mesh stay where they are."""
        if self.mesh is None:
            return params, others

        def put(value: Any, variable: Any) -> Any:
            return value if self.on_mesh(value) else self._put(value, self.variable_sharding(variable))

        variables = spec.variables
        leaves, treedef = jax.tree.flatten(params)
        leaves = [put(v, variables[i]) for v, i in zip(leaves, spec.param_order, strict=True)]
        others = tuple(put(v, variables[i]) for v, i in zip(others, spec.other_index, strict=True))
        return jax.tree.unflatten(treedef, leaves), others

    @staticmethod
    def _put(value: Any, sharding: NamedSharding) -> Any:
        """``value`` laid out as ``sharding``; with several processes each builds its own
        devices' part from its copy of ``value`` (every process holds the same value)."""
        if jax.process_count() == 1:
            return jax.device_put(value, sharding)
        if jax.numpy.issubdtype(value.dtype, jax.dtypes.prng_key):  # as its key data
            data = Placement._put(jax.random.key_data(value), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def on_mesh(self, leaf: Any) -> bool:
        """Whether ``leaf`` is an array already laid out on this mesh."""
        current = getattr(leaf, "sharding", None)
        return isinstance(current, NamedSharding) and current.mesh == self.mesh

    def variable_sharding(self, variable: Any) -> NamedSharding:
        """Where a model leaf goes: by its Variable's sharding metadata (logical axis rules
        applied), replicated without metadata or for a raw array."""
        if isinstance(variable, nnx.Variable):
            return NamedSharding(self.mesh, get_var_pspec(variable))
        return self.replicated

    def session_state(self, state: Any, spec: Any, init_opt: Any) -> Any:
        """``state`` with every leaf on the mesh: the model's arrays by their metadata, an
        optimizer state read from a checkpoint (on one device) laid out as ``init_opt(params)``
        lays it out (following the parameters), the rest replicated. Leaves already on the mesh
        stay."""
        if self.mesh is None:
            return state
        params, others = self.model_arrays(spec, state.params, state.others)
        opt = state.opt_state
        if opt is not None and not all(self.on_mesh(v) for v in jax.tree.leaves(opt)):
            fresh = init_opt(params)  # laid out after the parameters

            def follow(value: Any, like: Any) -> Any:
                if self.on_mesh(value):
                    return value
                return self._put(value, like.sharding if self.on_mesh(like) else self.replicated)

            opt = jax.tree.map(follow, opt, fresh)

        def replicate(tree: Any) -> Any:
            return jax.tree.map(lambda v: v if self.on_mesh(v) else self._put(v, self.replicated), tree)

        return state._replace(
            params=params, others=others, opt_state=opt, metrics=replicate(state.metrics),
            counters=replicate(state.counters),
        )

    def state_shardings(self, leaves: list[Any]) -> tuple | None:
        """The sharding each state leaf keeps through the compiled steps: its own when it is
        sharded on this mesh (the parameters, the optimizer state made from them), else
        replicated. None without a mesh (the compiler decides)."""
        if self.mesh is None:
            return None
        return tuple(leaf.sharding if self.on_mesh(leaf) else self.replicated for leaf in leaves)

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
        """The global batch must split evenly over the data axis."""
        if batch_size % self.data_size:
            raise ValueError(
                f"{what}={batch_size} does not divide over the {self.data_size} devices of the mesh "
                f"axis {self.data_axis!r}: the global batch is split evenly, so it must be a multiple "
                f"of {self.data_size}."
            )

    def _rows(self, axis: int) -> Any:
        def sharding(a: Any) -> NamedSharding:
            spec = [None] * np.ndim(a)
            spec[axis] = self.data_axis
            return NamedSharding(self.mesh, PartitionSpec(*spec))

        return sharding

    def data(self, data: Any, batch_size: int) -> Any:
        """Array data laid out in blocks of ``batch_size`` rows, each block split over the data
        axis (``ArrayData.block``): a step's batch is one block, already spread over the
        devices as the step computes on it. (Rows split in one run over the devices would put a
        batch on one device, and the step would gather the whole data to every device.)"""
        if self.mesh is None or not isinstance(data, ArrayData):
            return data
        if data.block == batch_size:
            return data
        flat = data.flat()
        rows = jax.tree.leaves(flat)[0].shape[0]
        blocks = -(-rows // batch_size)

        def placed(a: Any) -> Any:
            if blocks * batch_size != rows:
                a = jax.numpy.pad(a, ((0, blocks * batch_size - rows),) + ((0, 0),) * (a.ndim - 1))
            a = a.reshape(blocks, batch_size, *a.shape[1:])
            # several processes each hold the whole arrays and place their devices' rows
            return self._put(a, self._rows(1)(a))

        return ArrayData(jax.tree.map(placed, flat), data.n, block=batch_size)

    def batch(self, batch: Any, stacked: bool = False) -> Any:
        """A fed batch on the device(s): split over the data axis along its batch axis (axis 1
        of a stacked block of batches)."""
        if self.mesh is None:
            return jax.device_put(batch)
        axis = 1 if stacked else 0
        processes = jax.process_count()
        rows = int(np.shape(jax.tree.leaves(batch)[0])[axis]) * processes
        self.check_batch_size(rows, "a batch of")
        sharding = self._rows(axis)
        if processes == 1:
            return jax.tree.map(lambda a: jax.device_put(a, sharding(a)), batch)
        # several processes: each feeds its own part of the global batch (its pipeline's shard)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding(a), np.asarray(a)), batch)

    def fetch(self, tree: Any) -> Any:
        """Device arrays as numpy on this host; arrays split over several processes are
        gathered from all of them first."""
        if self.mesh is None or jax.process_count() == 1:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
