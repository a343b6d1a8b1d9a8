"""Losses for training query models compatible with the gallery (CMP-NAS supplementary Tab. 4).

* ``kd_loss`` — Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): KL(softmax(t/T) ‖ softmax(s/T))
  scaled by T² so that its gradients keep their magnitude as T changes. The teacher is fixed (its logits detached).
* ``bct_loss`` — Shen et al., "Towards Backward-Compatible Representation Learning" (CVPR'20): the influence loss
  CE(W_g φq(x), y), the query embedding classified by the gallery's frozen classifier W_g (its parameters get no
  gradient, so only φq learns to live in the gallery's embedding space).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0) -> Tensor:
    """T²·KL(p_teacher ‖ p_student) at temperature T, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * T * T


def bct_loss(query_embedding: Tensor, labels: Tensor, gallery_classifier: nn.Linear) -> Tensor:
    """Cross-entropy of the query embedding through the gallery's classifier, with the classifier held fixed."""
    bias = None if gallery_classifier.bias is None else gallery_classifier.bias.detach()
    return F.cross_entropy(F.linear(query_embedding, gallery_classifier.weight.detach(), bias), labels)
