"""Weight-sharing layers. They know nothing of the search: the caller says how many channels to use."""
from nasx.ops.sliced import (SlicedBatchNorm2d, SlicedBranch, SlicedConv2d, active_extent, clear_extents,
                              mark_extent)
from nasx.ops.vit import SlicedLayerNorm, SlicedLinear, SlicedPatchEmbed, SlicedQKV

__all__ = ["SlicedConv2d", "SlicedBranch", "SlicedBatchNorm2d", "SlicedLinear", "SlicedQKV", "SlicedLayerNorm",
           "SlicedPatchEmbed", "mark_extent", "active_extent", "clear_extents"]
