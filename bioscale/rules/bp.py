"""Backpropagation: the control every other rule is compared with."""

from bioscale.rules.base import BackwardRule


class BP(BackwardRule):
    """Plain backprop: the model is trained as built."""
