"""Every member of a stack scored in one pass over a shared evaluation set (the test set, the training set in
evaluation order, a validation split: fixed by the dataset, never by the job's seed, so the members share it).

The classification task's ``_evaluate`` with a member dimension: top-1 error %, top-5 error % (None for 5
classes or fewer) and mean cross-entropy per member, from logits [M, B, classes] of one forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bioscale.tasks.base import Evaluation

if TYPE_CHECKING:
    from bioscale.stack import Stack


@torch.no_grad()
def evaluate(stack: Stack, loader: Any) -> list[Evaluation]:
    """One ``Evaluation`` per member, as ``tasks.get("classification").evaluate`` gives for its solo model."""
    net = stack.net
    was_training = net.training
    net.eval()
    m = stack.size
    wrong1 = torch.zeros(m, dtype=torch.long)
    wrong5 = torch.zeros(m, dtype=torch.long)
    loss_sum = torch.zeros(m)
    n = 0
    top5 = True
    for x, y in loader:
        logits = net(x).float()  # [M, B, C]
        wrong1 = wrong1.to(logits.device) + (logits.argmax(-1) != y).sum(1)
        top5 = logits.shape[-1] > 5
        if top5:
            hit = (logits.topk(5, dim=-1).indices == y[None, :, None]).any(-1)
            wrong5 = wrong5.to(logits.device) + (~hit).sum(1)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(m), reduction="none")
        loss_sum = loss_sum.to(logits.device) + ce.view(m, -1).sum(1)
        n += len(y)
    net.train(was_training)
    n = max(n, 1)
    w1, w5, total = wrong1.tolist(), wrong5.tolist(), loss_sum.tolist()
    return [Evaluation(100.0 * w1[i] / n, (100.0 * w5[i] / n if top5 else None), total[i] / n) for i in range(m)]
