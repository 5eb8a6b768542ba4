"""Test helpers that build and call layers under ``jax.jit`` (one compilation instead of one per
eager op), and count XLA compilations; shared by the nnx tests (this folder is on sys.path)."""

import contextlib
import logging

import jax

import nnx


def build(make):
    """Construct the module ``make()`` returns under jax.jit and return it as a live module."""
    graphdefs = []

    def init():
        graphdef, state = nnx.split(make())
        graphdefs.append(graphdef)
        return state

    state = jax.jit(init)()
    return nnx.merge(graphdefs[0], state)


def jit_call(module, *args, **kwargs):
    """Call ``module`` under jax.jit through split/merge and write its state changes back."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def call(state, args):
        m = nnx.merge(graphdef, state)
        return m(*args, **kwargs), nnx.state(m)

    out, state = call(state, args)
    nnx.update(module, state)
    return out


@contextlib.contextmanager
def compilations():
    """The names of the programs XLA compiles inside the block."""
    names = []

    class Handler(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Finished XLA compilation of "):
                names.append(message.split()[4])

    handler = Handler()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield names
    finally:
        logger.removeHandler(handler)
