"""Direct Random Target Projection (DRTP) as a bioscale plugin: a new learning rule in one small file.

Frenkel, Lefebvre & Bol 2021, "Learning without feedback: fixed random learning signals allow for
feedforward training of deep neural networks", Frontiers in Neuroscience 15:629892 (arXiv:1909.01311).

DRTP is direct feedback alignment (Nokland 2016) with the output error replaced by the target. In a
classification problem the one-hot label y* already carries the sign of the error e = softmax - y*
(negative for the true class, positive for the others), so a fixed random projection of y* is enough to
train the hidden layers. Hidden layer l receives

    delta_l = (onehot(y) B_l) * f'(a_l),          B_l fixed random, shape (classes, numel(h_l)),

and nothing from the layers above or from the output: a hidden layer can update as soon as its own forward
pass is done (no weight transport, no update locking). The output layer keeps its true gradient.

Use it without installing anything:

    bioscale --plugin examples/plugin_drtp.py run examples/drtp.yaml
    bioscale --plugin examples/plugin_drtp.py report --grid drtp

To write your own rule, copy this file: subclass a rule, change what you need, register it with
``@register_rule``. The registration is all ``grid validate``, ``list rules``, the report and the contract
tests need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bioscale.catalog import register_rule
from bioscale.rules.feedback import DFA, BackwardParams


@register_rule("drtp", family="backward", params=BackwardParams, display="DRTP", order=55, needs_layered=True,
               summary="Direct random target projection: each hidden layer gets the one-hot target through "
                       "its own fixed random B; no error reaches the hidden layers.",
               source="Frenkel, Lefebvre & Bol 2021 (Frontiers in Neuroscience); B drawn as DFA's")
class DRTP(DFA):
    """DRTP (Frenkel et al. 2021) on a ``LayeredNet``: DFA's machinery with the target as the hidden signal.

    Everything but the projected signal is inherited from ``DFA``: B_l is drawn at ``prepare`` exactly as
    DFA's (``feedback_init``, stored as ``layers.<l>.direct_feedback.matrix``), each hidden layer's input is
    detached from the layer below, and autograd applies f'(a_l) and forms delta_l h_{l-1}^T.

    Scaling: the paper's formula is per example, but the trainer's losses are batch means (the output
    layer's gradient is the batch mean of e h^T). So the signal sent here is onehot(y) / batch_size, and
    every hidden gradient is the batch mean of delta_l h_{l-1}^T, on the same scale as DFA's. (The authors'
    code seeds the hidden layers with onehot(y) B_l un-normalised; under Adam this differs only through eps.)
    """

    def direct_signal(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What B_l projects to every hidden layer: the one-hot target of the batch-mean loss, not e."""
        return F.one_hot(y, e.shape[1]).to(e.dtype) / e.shape[0]

    def describe(self) -> str | None:
        return f"direct random target projection to {len(self._layers)} hidden layers: {', '.join(self._layers)}"
