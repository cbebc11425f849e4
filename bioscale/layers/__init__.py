"""Layers: the locally-connected layer, feedback layers for the backward rules, inverses for target rules."""

from bioscale.layers.locally_connected import LocallyConnected2d, lc2d, lc2d_transpose

__all__ = ["LocallyConnected2d", "lc2d", "lc2d_transpose"]
