"""Metrics: retrieval (top-k, TAR@FAR, IJB-C template pooling, TPIR@FPIR)."""
from nasx.metrics.retrieval import (identification_1n, identification_g1_g2, pair_scores, tar_at_far,
                                    template_features, topk_retrieval)

__all__ = ["identification_1n", "identification_g1_g2", "pair_scores", "tar_at_far", "template_features",
           "topk_retrieval"]
