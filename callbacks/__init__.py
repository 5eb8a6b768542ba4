"""Callbacks: the hooks a Trainer calls, and the built-in callbacks."""

from callbacks.base import Callback, CallbackList
