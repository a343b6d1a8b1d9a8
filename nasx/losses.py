"""Training losses, chosen by config: ``train.loss`` / ``retrain.loss`` map a name to a term, and the training
systems sum the active terms (``conf/train/uniform.yaml``: ``loss: {ce: {_target_: nasx.losses.CrossEntropy}}``).

* :class:`CrossEntropy` — the task loss (with optional label smoothing).
* :class:`BCT` — Shen et al., "Towards Backward-Compatible Representation Learning" (CVPR'20): the influence loss
  CE(W_r φ(x), y), the model's embedding classified by the *reference* model's frozen classifier W_r (CMP-NAS's
  gallery model), so only φ learns to live in the reference's embedding space.
* :class:`Distillation` — Hinton et al. (2015): T²·KL(softmax(t/T) ‖ softmax(s/T)) against the reference model's
  logits (t detached), so the gradients keep their magnitude as T changes.
* :class:`FocalDistillation` — Yan et al., "Positive-congruent training" (PCT, CVPR'22), REG-NAS's baseline
  [seed Tab. 2]: per sample T²·KL(softmax(old/T) ‖ softmax(new/T)), weighted by α + β·1[the reference is right],
  added to CE.

A term that uses the reference model says so (``needs_reference``); the method supplies that model (a run's
reference-model stage: CMP-NAS's gallery, REG-NAS's old model). A term with ``weight: 0`` is off.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasx.errors import ConfigError


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0) -> Tensor:
    """T²·KL(p_teacher ‖ p_student) at temperature T, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * T * T


def bct_loss(embedding: Tensor, labels: Tensor, reference_classifier: nn.Module) -> Tensor:
    """Cross-entropy of the embedding through the reference's classifier, whose parameters get no gradient."""
    if isinstance(reference_classifier, nn.Linear):
        w, b = reference_classifier.weight, reference_classifier.bias
        return F.cross_entropy(F.linear(embedding, w.detach(), None if b is None else b.detach()), labels)
    return F.cross_entropy(torch.func.functional_call(
        reference_classifier, {k: v.detach() for k, v in reference_classifier.named_parameters()}, (embedding,)),
        labels)


@dataclass
class Batch:
    """What a loss term sees of one step: inputs, labels, the model's embedding (when a term needs it) and logits,
    and the reference model (frozen, eval mode) when one is given."""

    x: Tensor
    y: Tensor
    features: Tensor | None
    logits: Tensor
    reference: nn.Module | None


class LossTerm(ABC):
    """One weighted term of the training loss."""

    needs_features = False  # uses the embedding (forward_features), not only the logits
    needs_reference = False  # uses the reference model

    def __init__(self, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"loss weight must be a number >= 0, got {weight!r}")
        self.weight = float(weight)

    @abstractmethod
    def __call__(self, b: Batch) -> Tensor:
        """The unweighted term."""


class CrossEntropy(LossTerm):
    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss.ce.label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def __call__(self, b: Batch) -> Tensor:
        return F.cross_entropy(b.logits, b.y, label_smoothing=self.label_smoothing)


class BCT(LossTerm):
    needs_features = needs_reference = True

    def __call__(self, b: Batch) -> Tensor:
        return bct_loss(b.features, b.y, b.reference.classifier)


class Distillation(LossTerm):
    needs_reference = True

    def __init__(self, weight: float = 1.0, temperature: float = 4.0):
        super().__init__(weight)
        if not temperature > 0:
            raise ConfigError(f"loss.kd.temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, b: Batch) -> Tensor:
        with torch.no_grad():
            teacher = b.reference(b.x)
        return kd_loss(b.logits, teacher, self.temperature)


def focal_distillation(new_logits: Tensor, old_logits: Tensor, y: Tensor, alpha: float = 1.0, beta: float = 5.0,
                       temperature: float = 100.0) -> Tensor:
    """PCT's focal distillation: ``mean_i w_i · T²·KL(softmax(old_i/T) ‖ softmax(new_i/T))`` with
    ``w_i = α + β·1[argmax old_i = y_i]`` (the samples the reference gets right are the ones a negative flip can
    lose). α = 1, β = 5 and T = 100 are the reference code's defaults [ref:
    ``amazon-science/regression-constraint-model-upgrade``, ``FocalDistillationLoss``, focus type ``old_correct``].
    [nasx] The weights multiply each sample's own KL, as the paper's formula says: the reference code multiplies an
    (N, 1) weight column by an (N,) loss row, which broadcasts to (N, N) and averages to mean(w)·mean(KL)."""
    old = old_logits.detach()
    per_sample = F.kl_div(F.log_softmax(new_logits / temperature, dim=1), F.log_softmax(old / temperature, dim=1),
                          reduction="none", log_target=True).sum(1) * temperature ** 2
    weights = alpha + beta * (old.argmax(1) == y).to(per_sample.dtype)
    return (weights * per_sample).mean()


class FocalDistillation(LossTerm):
    needs_reference = True

    def __init__(self, weight: float = 1.0, alpha: float = 1.0, beta: float = 5.0, temperature: float = 100.0):
        super().__init__(weight)
        for key, v, ok in (("alpha", alpha, alpha >= 0), ("beta", beta, beta >= 0), ("temperature", temperature,
                                                                                       temperature > 0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok:
                raise ConfigError(f"loss.fd.{key} must be a number {'> 0' if key == 'temperature' else '>= 0'}, "
                                  f"got {v!r}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def __call__(self, b: Batch) -> Tensor:
        with torch.no_grad():
            old = b.reference(b.x)
        return focal_distillation(b.logits, old, b.y, self.alpha, self.beta, self.temperature)


class Loss:
    """The sum of the active terms (weight > 0), in config order: ``Σ weight · term``."""

    def __init__(self, terms: Mapping[str, LossTerm], reference: nn.Module | None = None, where: str = "train.loss"):
        self.terms = {name: t for name, t in terms.items() if t.weight > 0}
        if not self.terms:
            raise ConfigError(f"{where} has no term with a positive weight (e.g. ce: {{_target_: "
                              f"nasx.losses.CrossEntropy}})")
        users = [name for name, t in self.terms.items() if t.needs_reference]
        if users and reference is None:
            raise ConfigError(f"{where}.{users[0]} needs a reference model, and this method has none (CMP-NAS's "
                              f"gallery model: gallery=resnet_cpu; REG-NAS's previous family member)")
        self.reference = reference.eval().requires_grad_(False) if users else None
        self.needs_features = any(t.needs_features for t in self.terms.values())

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *arch) -> tuple[Tensor, Tensor]:
        """(loss, logits) of ``model`` on a batch; ``arch`` is passed on to a supernet's forward."""
        if self.needs_features:
            features = model.forward_features(x, *arch)
            logits = model.classifier(features)
        else:
            features, logits = None, model(x, *arch)
        if self.reference is not None:
            self.reference.eval()
        b = Batch(x, y, features, logits, self.reference)
        total = None
        for t in self.terms.values():
            value = t(b) if t.weight == 1.0 else t.weight * t(b)
            total = value if total is None else total + value
        return total, logits


def make_terms(terms_cfg, where: str = "train.loss") -> dict[str, LossTerm]:
    """The terms a config node ``{name: {_target_: nasx.losses.<Term>, ...}}`` describes."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if terms_cfg is None or not hasattr(terms_cfg, "items"):
        raise ConfigError(f"{where} must map term names to terms, e.g. {{ce: {{_target_: nasx.losses.CrossEntropy}}}}")
    terms = {}
    for name, node in terms_cfg.items():
        try:
            term = instantiate(node)
        except InstantiationException as e:
            cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else None
            if cause is not None:
                raise ConfigError(f"{where}.{name}: {cause}") from None
            raise ConfigError(f"{where}.{name}: cannot build the term ({' '.join(str(e).split())})") from None
        if not isinstance(term, LossTerm):
            raise ConfigError(f"{where}.{name}: _target_ must be a nasx.losses term (CrossEntropy, BCT, "
                              f"Distillation, FocalDistillation), got {type(term).__name__}")
        terms[name] = term
    return terms


def needs_reference(terms: Mapping[str, LossTerm]) -> bool:
    """Whether an active term uses the reference model."""
    return any(t.needs_reference and t.weight > 0 for t in terms.values())


def cross_entropy() -> Loss:
    """Plain cross-entropy: the default loss of a training system built without a config."""
    return Loss({"ce": CrossEntropy()})
