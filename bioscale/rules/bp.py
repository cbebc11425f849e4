"""Backpropagation: the control every other rule is compared with."""

from bioscale.catalog import register_rule
from bioscale.rules.base import BackwardRule, BPParams


@register_rule("bp", family="backward", params=BPParams, display="BP", order=100,
               summary="Backpropagation (the control).", source="Rumelhart et al. 1986; the papers' baseline")
class BP(BackwardRule):
    """Plain backprop: the model is trained as built."""
