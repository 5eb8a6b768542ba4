"""Wrappers that re-normalize the weights of another layer before each of its calls:
``WeightNorm`` (each weight divided by its L2 norm, times a learned scale) and ``SpectralNorm``
(each matrix divided by its largest singular value, estimated by power iteration).

Both write the normalized values into the wrapped layer's Params (as Flax does), so after a
call the layer holds the weights it was called with; the normalization is differentiable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnx.filterlib import PathContains, to_predicate
from nnx.graph import state
from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.rnglib import Rngs
from nnx.variablelib import BatchStat, Param, Variable

Axes = int | tuple[int, ...]
Path = tuple[Any, ...]


def _axes(axes: Axes, ndim: int) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(sorted({a % ndim for a in axes}))


def _l2_normalize(x: jax.Array, axis: tuple[int, ...] | None, eps: float) -> jax.Array:
    """``x / sqrt(sum(x^2 over axis) + eps)`` (all axes when ``axis`` is None)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps)


def _params(layer: Module) -> list[tuple[Path, Variable]]:
    """The Param Variables of ``layer`` (the objects themselves) with their paths."""
    return list(state(layer, Param).flat_state())


class WeightNorm(Module):
    """L2 weight normalization (Salimans & Kingma, 2016) of the Params of ``layer_instance``.

    Before each call, every Param selected by ``variable_filter`` becomes
    ``w / ||w|| * scale``, the norm taken over all axes but ``feature_axes`` and ``scale``
    (one entry per feature) learned, stored in ``scales`` under the Param's path.

    Args:
      layer_instance: the module whose weights are normalized; called with the arguments.
      feature_axes: the axes kept (one norm and one scale per entry); None normalizes each
        weight as a whole.
      use_scale: learn ``scales`` (otherwise the weights get unit norm).
      scale_init: initializer of the scales, called as ``scale_init(key, shape)``: the scales
        are float32 whatever ``param_dtype`` (as in Flax and Linen).
      epsilon: added to the squared norm.
      dtype: dtype of the normalized weights; None promotes each weight with its scale.
      param_dtype: kept for the Flax signature.
      variable_filter: selects the Params to normalize (default: paths containing 'kernel').
      promote_dtype: kept for the Flax signature; the weights are cast with ``dtype``.
      rngs: random streams for ``scale_init``.

    Example::

      >>> layer = WeightNorm(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
      >>> layer(jnp.ones((2, 8))).shape
      (2, 4)
      >>> bool(jnp.allclose(jnp.linalg.norm(layer.layer_instance.kernel[...], axis=0), 1.0))
      True
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        feature_axes: Axes | None = -1,
        use_scale: bool = True,
        scale_init: initializers.Initializer = initializers.ones,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        variable_filter: Any = PathContains("kernel"),
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs,
    ):
        if not callable(layer_instance):
            raise TypeError(
                f"WeightNorm: layer_instance must be a callable module, got "
                f"{type(layer_instance).__name__}"
            )
        self.layer_instance = layer_instance
        self.feature_axes = () if feature_axes is None else feature_axes
        self.use_scale = use_scale
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = variable_filter
        self.promote_dtype = promote_dtype
        self.scales: dict[Path, Param] | None = None
        if use_scale:
            self.scales = {
                path: Param(scale_init(rngs.params(), self._scale_shape(param.shape)))
                for path, param in self._selected()
            }

    def _selected(self) -> list[tuple[Path, Variable]]:
        keep = to_predicate(self.variable_filter)
        return [(path, param) for path, param in _params(self.layer_instance) if keep(path, param)]

    def _scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[a] for a in _axes(self.feature_axes, len(shape)))

    def _normalize(self, path: Path, param: Variable) -> None:
        weight = param.value
        feature_axes = _axes(self.feature_axes, weight.ndim)
        reduction_axes = tuple(a for a in range(weight.ndim) if a not in feature_axes)
        normalized = _l2_normalize(weight, reduction_axes, self.epsilon)
        cast_args = [weight]
        if self.use_scale:
            if path not in self.scales:
                raise KeyError(
                    f"WeightNorm: no scale for the parameter at {path}; the wrapped layer's "
                    f"parameters changed after WeightNorm was created (it has scales for "
                    f"{sorted(self.scales, key=str)})"
                )
            scale = self.scales[path].value
            shape = [weight.shape[a] if a in feature_axes else 1 for a in range(weight.ndim)]
            scale = jnp.reshape(scale, shape)
            normalized = normalized * scale
            cast_args.append(scale)
        param.value = jnp.asarray(
            normalized, dtypes.canonicalize_dtype(*cast_args, dtype=self.dtype)
        )

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> Any:
        """Normalize the selected weights in place, then call ``layer_instance(x, ...)``."""
        for path, param in self._selected():
            self._normalize(path, param)
        return self.layer_instance(x, *args, **kwargs)


class SpectralNorm(Module):
    """Spectral normalization (Miyato et al., 2018) of the matrices of ``layer_instance``.

    Before each call, every Param with two or more dims (higher ranks are flattened to
    ``(-1, last_dim)``) is divided by its largest singular value ``sigma``, estimated with
    ``n_steps`` power iterations from the vector ``u``. ``u`` and ``sigma`` are ``BatchStat``
    Variables in ``batch_stats``, under the Param's path plus ``'u'`` / ``'sigma'``; they are
    updated when ``update_stats`` (training mode: ``model.train()`` / ``model.eval()`` switch it
    through ``use_running_average``).

    Args:
      layer_instance: the module whose weights are normalized; called with the input.
      n_steps: power iterations per call (0 leaves the weights unchanged).
      epsilon: added in the L2 normalizations of the iteration.
      dtype: dtype of the normalized weights; None promotes.
      param_dtype: dtype of ``u`` and ``sigma``.
      error_on_non_matrix: raise for Params with more than two dims instead of flattening them.
      update_stats: store the new ``u`` and ``sigma`` after each call.
      rngs: random streams; ``u`` starts as a normal draw from ``rngs.params()``.

    Example::

      >>> layer = SpectralNorm(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), n_steps=20, rngs=nnx.Rngs(1))
      >>> y = layer(jnp.ones((3, 4)))
      >>> round(float(jnp.linalg.norm(layer.layer_instance.kernel[...], ord=2)), 3)
      1.0
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: Rngs,
    ):
        if not callable(layer_instance):
            raise TypeError(
                f"SpectralNorm: layer_instance must be a callable module, got "
                f"{type(layer_instance).__name__}"
            )
        self.layer_instance = layer_instance
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        # the inverse of update_stats, under the name model.train() / model.eval() set
        self.use_running_average = not update_stats
        self.batch_stats: dict[Path, BatchStat] = {}
        for path, param in self._matrices():
            key = rngs.params()
            columns = param.shape[-1]
            self.batch_stats[(*path, "u")] = BatchStat(
                initializers.normal()(key, (1, columns), param_dtype)
            )
            self.batch_stats[(*path, "sigma")] = BatchStat(initializers.ones(key, (), param_dtype))

    def _matrices(self) -> list[tuple[Path, Variable]]:
        """The Params to normalize: those with two or more dims (none when ``n_steps < 1``)."""
        if self.n_steps < 1:
            return []
        found = [(path, param) for path, param in _params(self.layer_instance) if param.ndim > 1]
        for path, param in found:
            if param.ndim > 2 and self.error_on_non_matrix:
                raise ValueError(
                    f"SpectralNorm: the parameter at {path} has shape {param.shape} (more than 2 "
                    f"dims) and error_on_non_matrix=True"
                )
        return found

    def _stat(self, path: Path, name: str) -> BatchStat:
        stat = self.batch_stats.get((*path, name))
        if stat is None:
            raise KeyError(
                f"SpectralNorm: no {name!r} statistic for the parameter at {path}; the wrapped "
                f"layer's parameters changed after SpectralNorm was created"
            )
        return stat

    def _normalize(self, path: Path, param: Variable, update_stats: bool) -> None:
        shape = param.shape
        weight = jnp.reshape(param.value, (-1, shape[-1])) if param.ndim > 2 else param.value
        u_stat, sigma_stat = self._stat(path, "u"), self._stat(path, "sigma")
        u = u_stat.value
        for _ in range(self.n_steps):
            v = _l2_normalize(jnp.matmul(u, weight.T), None, self.epsilon)
            u = _l2_normalize(jnp.matmul(v, weight), None, self.epsilon)
        u = jax.lax.stop_gradient(u)
        v = jax.lax.stop_gradient(v)
        sigma = jnp.matmul(jnp.matmul(v, weight), u.T)[0, 0]
        weight = jnp.reshape(weight / jnp.where(sigma != 0, sigma, 1), shape)
        if update_stats:
            u_stat.value = u
            sigma_stat.value = sigma
        dtype = dtypes.canonicalize_dtype(weight, u, v, sigma, dtype=self.dtype)
        param.value = jnp.asarray(weight, dtype)

    def __call__(self, x: jax.Array, update_stats: bool | None = None) -> Any:
        """Normalize the matrices in place, then call ``layer_instance(x)``.

        Args:
          x: the input of the wrapped layer.
          update_stats: store the new ``u`` and ``sigma`` (None: ``not use_running_average``).
        """
        if update_stats is None:
            update_stats = not self.use_running_average
        for path, param in self._matrices():
            self._normalize(path, param, update_stats)
        return self.layer_instance(x)


__all__ = ["SpectralNorm", "WeightNorm"]
