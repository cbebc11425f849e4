"""Layers: the locally-connected layer, feedback layers for the backward rules, inverses for target rules."""

from bioscale.layers.convert import ConversionReport, convert_to_feedback
from bioscale.layers.feedback import FeedbackConv2d, FeedbackLinear, FeedbackLocallyConnected2d
from bioscale.layers.locally_connected import LocallyConnected2d, lc2d, lc2d_transpose

__all__ = [
    "ConversionReport",
    "FeedbackConv2d",
    "FeedbackLinear",
    "FeedbackLocallyConnected2d",
    "LocallyConnected2d",
    "convert_to_feedback",
    "lc2d",
    "lc2d_transpose",
]
