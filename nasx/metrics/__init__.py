"""Metrics: retrieval (top-k, TAR@FAR, IJB-C template pooling, TPIR@FPIR) and model-update regression (negative and
positive flip rates, relative change, paired bootstrap intervals)."""
from nasx.metrics.flips import (flip_report, negative_flip_rate, nfr_matrix, paired_difference, positive_flip_rate,
                                relative_change)
from nasx.metrics.retrieval import (identification_1n, identification_g1_g2, pair_scores, tar_at_far,
                                    template_features, topk_retrieval)

__all__ = ["flip_report", "identification_1n", "identification_g1_g2", "negative_flip_rate", "nfr_matrix",
           "pair_scores", "paired_difference", "positive_flip_rate", "relative_change", "tar_at_far",
           "template_features", "topk_retrieval"]
