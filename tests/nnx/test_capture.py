"""nnx.capture: collecting what modules sow and perturb, through nnx transforms."""

import jax.numpy as jnp
import numpy as np

import nnx


class Triple(nnx.Module):
    def __call__(self, x):
        x = self.perturb("grad_of_x", x)
        y = 3 * x
        self.sow(nnx.Intermediate, "y", y)
        return y


def test_capture_collects_sown_values_and_removes_its_buffers():
    model = Triple()
    y, intermediates = nnx.capture(model, nnx.Intermediate)(2.0)
    assert y == 6.0 and intermediates["y"][...] == (6.0,)
    assert isinstance(intermediates["y"], nnx.Intermediate)
    assert "__captures__" not in vars(model) and "y" not in vars(model)


def test_perturbations_give_gradients_at_activations():
    model = Triple()
    _, perturbations = nnx.capture(model, nnx.Perturbation)(1.0)
    assert float(perturbations["grad_of_x"][...]) == 0.0

    @nnx.jit
    def train_step(model, perturbations, x):
        def loss(model, perturbations, x):
            return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)

        (_, perturb_grads), sown = nnx.grad(loss, argnums=(0, 1), has_aux=True)(
            model, perturbations, x
        )
        return nnx.merge_state(perturb_grads, sown)

    out = train_step(model, perturbations, 1.0)
    assert float(out["grad_of_x"][...]) == 3.0 and float(out["y"][...][0]) == 3.0


def test_method_outputs_are_sown_under_method_names():
    class Foo(nnx.Module):
        def __init__(self):
            self.inner = Inner()

        def __call__(self, x):
            return self.inner.process(x) + 1

    class Inner(nnx.Module):
        def process(self, x):
            return 2 * x

    model = Foo()
    y, intms = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(
        jnp.ones(2)
    )
    np.testing.assert_array_equal(intms["__call__"][...][0], y)
    np.testing.assert_array_equal(intms["inner"]["process"][...][0], [2.0, 2.0])
    assert not hasattr(Inner.process, "__wrapped__")  # the methods are restored


def test_capture_as_a_decorator_and_sow_without_capture():
    @nnx.capture(nnx.Intermediate)
    def run(model, x):
        return model(x)

    _, intms = run(Triple(), 1.0)
    assert intms["y"][...] == (3.0,)
    model = Triple()
    model(1.0)  # without a capture: sow and perturb use attributes
    assert model.y[...] == (3.0,) and isinstance(model.grad_of_x, nnx.Perturbation)
