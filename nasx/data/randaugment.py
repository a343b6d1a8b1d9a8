"""RandAugment in torch, per sample, as AutoFormer/DeiT train ImageNet (``rand-m9-mstd0.5-inc1``) [seed Tab. 10].

VIM-NAS's Tab. 10 turns RandAugment on for ImageNet and fixes nothing else about it; its search space and recipe come
from AutoFormer, which trains with timm's ``--aa rand-m9-mstd0.5-inc1``. nasx follows that policy [ref: timm
``auto_augment.py``; nasx's own torch code, since there is no torchvision here]:

- ``num_ops`` (2) operations per image, each drawn uniformly, with replacement, from the 15 "increasing" ops below, and
  each applied with probability ``prob`` (0.5);
- each application draws its magnitude from N(``magnitude``, ``magnitude_std``) clipped to [0, 10] (``magnitude_std``
  0 keeps it fixed); signed ops (rotate, shear, translate, the enhance factors) flip sign with probability 1/2;
- levels at magnitude m: rotate 30·m/10 degrees; shear 0.3·m/10; translate 0.45·m/10 of the side; posterize keeps
  4 − ⌊4·m/10⌋ bits; solarize above 256 − ⌊256·m/10⌋; solarize-add adds ⌊110·m/10⌋ below 128; colour, contrast,
  brightness and sharpness blend with factor 1 ± 0.9·m/10; auto-contrast, equalize and invert have no level;
- geometric ops sample bilinearly and fill with the ImageNet mean pixel (124, 116, 104), as timm does.

It acts on one float image (3, H, W) in 0..255 units, after the random-resized crop and mirror and before
standardisation (timm's order), and draws everything from the caller's ``torch.Generator`` (seeded per sample from
(seed, epoch, index)), so a resumed run repeats it. Pixel arithmetic follows PIL's (greyscale weights 0.299/0.587/0.114,
the equalize look-up table, the 3×3 smoothing kernel of sharpness with the border kept), in float rather than uint8.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from nasx.errors import ConfigError

FILL = (124.0, 116.0, 104.0)  # timm's img_mean: the ImageNet mean pixel in 0..255
MAX_LEVEL = 10.0
OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color", "contrast",
       "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
_GREY = (0.299, 0.587, 0.114)


def _grey(x: Tensor) -> Tensor:
    """(3, H, W) -> (1, H, W) luminance (PIL's 'L' conversion)."""
    w = torch.tensor(_GREY, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(0, keepdim=True)


def _blend(degenerate: Tensor, x: Tensor, factor: float) -> Tensor:
    """PIL ImageEnhance: degenerate + factor·(x − degenerate), clipped to 0..255."""
    return (degenerate + factor * (x - degenerate)).clamp(0, 255)


def auto_contrast(x: Tensor) -> Tensor:
    """Per channel, stretch min..max to 0..255 (a flat channel is left alone)."""
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) * 255.0 / span.clamp_min(1e-12), x)


def equalize(x: Tensor) -> Tensor:
    """PIL's ImageOps.equalize per channel on the image quantised to 0..255."""
    q = x.round().clamp(0, 255).long()
    out = []
    for c in range(q.shape[0]):
        hist = torch.bincount(q[c].flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if len(nonzero) > 1 else 0
        if step == 0:
            out.append(x[c])
            continue
        before = torch.cumsum(hist, 0) - hist  # pixels below each level
        lut = ((step // 2 + before) // step).clamp(max=255)
        out.append(lut[q[c]].to(x.dtype))
    return torch.stack(out)


def posterize(x: Tensor, bits: int) -> Tensor:
    """Keep the ``bits`` most significant bits of each 8-bit value."""
    if bits >= 8:
        return x
    unit = 2 ** (8 - max(bits, 0))
    return torch.floor(x.clamp(0, 255) / unit) * unit


def solarize(x: Tensor, threshold: float) -> Tensor:
    return torch.where(x >= threshold, 255.0 - x, x)


def solarize_add(x: Tensor, add: float, threshold: float = 128.0) -> Tensor:
    return torch.where(x < threshold, (x + add).clamp(max=255), x)


def sharpness(x: Tensor, factor: float) -> Tensor:
    """Blend with PIL's SMOOTH filter (kernel [[1,1,1],[1,5,1],[1,1,1]]/13); the one-pixel border stays as it is."""
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(x.shape[0], 1, 3, 3)
    smooth = x.clone()
    if x.shape[-1] > 2 and x.shape[-2] > 2:
        smooth[:, 1:-1, 1:-1] = F.conv2d(x[None], kernel, groups=x.shape[0])[0]
    return _blend(smooth, x, factor)


def affine(x: Tensor, matrix: tuple[float, float, float, float, float, float], fill=FILL) -> Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f))``: output pixel (u, v) reads input (a·u + b·v + c,
    d·u + e·v + f), coordinates at pixel centres; bilinear; outside the image reads ``fill``."""
    h, w = x.shape[-2:]
    a, b, c, d, e, f = matrix
    v, u = torch.meshgrid(torch.arange(h, dtype=x.dtype) + 0.5, torch.arange(w, dtype=x.dtype) + 0.5, indexing="ij")
    px, py = a * u + b * v + c, d * u + e * v + f
    grid = torch.stack((2 * px / w - 1, 2 * py / h - 1), dim=-1)[None].to(x.device)
    fill_t = torch.tensor(fill, dtype=x.dtype, device=x.device).view(-1, 1, 1)[: x.shape[0]]
    out = F.grid_sample((x - fill_t)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out + fill_t


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Counter-clockwise by ``degrees`` about the centre (PIL ``Image.rotate``)."""
    h, w = x.shape[-2:]
    t = math.radians(degrees)
    cx, cy = w / 2.0, h / 2.0
    cos, sin = math.cos(t), math.sin(t)
    # output (u, v) reads the input at R(−θ) in image coordinates (y down): counter-clockwise on screen
    return affine(x, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy))


def _level(m: float) -> float:
    return m / MAX_LEVEL


def apply_op(x: Tensor, name: str, m: float, sign: float) -> Tensor:
    """Op ``name`` at magnitude ``m`` (0..10); ``sign`` ±1 for the signed ops."""
    h, w = x.shape[-2:]
    lv = _level(m)
    if name == "auto_contrast":
        return auto_contrast(x)
    if name == "equalize":
        return equalize(x)
    if name == "invert":
        return 255.0 - x
    if name == "rotate":
        return rotate(x, sign * 30.0 * lv)
    if name == "posterize":
        return posterize(x, 4 - int(lv * 4))
    if name == "solarize":
        return solarize(x, 256 - int(lv * 256))
    if name == "solarize_add":
        return solarize_add(x, int(lv * 110))
    factor = 1.0 + sign * 0.9 * lv
    if name == "color":
        return _blend(_grey(x).expand_as(x), x, factor)
    if name == "contrast":
        return _blend(torch.full_like(x, float(_grey(x).mean().add(0.5).floor())), x, factor)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, factor)
    if name == "sharpness":
        return sharpness(x, factor)
    if name == "shear_x":
        return affine(x, (1.0, sign * 0.3 * lv, 0.0, 0.0, 1.0, 0.0))
    if name == "shear_y":
        return affine(x, (1.0, 0.0, 0.0, sign * 0.3 * lv, 1.0, 0.0))
    if name == "translate_x":
        return affine(x, (1.0, 0.0, sign * 0.45 * lv * w, 0.0, 1.0, 0.0))
    if name == "translate_y":
        return affine(x, (1.0, 0.0, 0.0, 0.0, 1.0, sign * 0.45 * lv * h))
    raise ValueError(f"unknown RandAugment op {name!r} (nasx has {', '.join(OPS)})")


class RandAugment:
    """``num_ops`` random ops per image at magnitude ~ N(``magnitude``, ``magnitude_std``), each with probability
    ``prob``. Call with a float image (3, H, W) in 0..255 and a ``torch.Generator``."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, prob: float = 0.5,
                 key: str = "data.rand_augment") -> None:
        for k, v, ok in (("num_ops", num_ops, isinstance(num_ops, int) and not isinstance(num_ops, bool)
                          and num_ops >= 1),
                         ("magnitude", magnitude, _number(magnitude) and 0 <= magnitude <= MAX_LEVEL),
                         ("magnitude_std", magnitude_std, _number(magnitude_std) and magnitude_std >= 0),
                         ("prob", prob, _number(prob) and 0 <= prob <= 1)):
            if not ok:
                rule = {"num_ops": "an integer >= 1", "magnitude": "a number in 0..10",
                        "magnitude_std": "a number >= 0", "prob": "a number in 0..1"}[k]
                raise ConfigError(f"{key}.{k} must be {rule}, got {v!r}")
        self.num_ops, self.magnitude = int(num_ops), float(magnitude)
        self.magnitude_std, self.prob = float(magnitude_std), float(prob)

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, prob={self.prob})")

    def draws(self, g: torch.Generator) -> list[tuple[str, float, float]]:
        """The (op, magnitude, sign) applied to one image (ops that the coin skips are left out)."""
        out = []
        for _ in range(self.num_ops):
            u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
            op = OPS[int(torch.randint(0, len(OPS), (1,), generator=g))]
            m = self.magnitude
            if self.magnitude_std > 0:
                m += self.magnitude_std * float(torch.randn(1, generator=g, dtype=torch.float64))
            if u[0] < self.prob:
                out.append((op, min(max(m, 0.0), MAX_LEVEL), -1.0 if u[1] < 0.5 else 1.0))
        return out

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = x.float()
        for op, m, sign in self.draws(g):
            x = apply_op(x, op, m, sign)
        return x.clamp(0, 255)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_TIMM = re.compile(r"^rand(?P<rest>(-[a-z]+[0-9.]*)*)$")


def rand_augment(value, key: str = "data.rand_augment") -> RandAugment | None:
    """A config value -> RandAugment or None. ``null``/``false`` is off; a mapping gives the keyword arguments
    (``num_ops``, ``magnitude``, ``magnitude_std``, ``prob``); a timm string such as ``rand-m9-mstd0.5-inc1`` is read
    as timm reads it (``n`` ops, ``m`` magnitude, ``mstd``, ``p``, with timm's defaults 2, 10, 0, 0.5; ``inc1``
    is required: the only op set nasx has)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or value is False:
        return None
    if isinstance(value, Mapping):
        bad = sorted(set(value) - {"num_ops", "magnitude", "magnitude_std", "prob"})
        if bad:
            raise ConfigError(f"{key}.{bad[0]}: unknown (RandAugment takes num_ops, magnitude, magnitude_std, prob)")
        return RandAugment(**dict(value), key=key)
    if isinstance(value, str):
        match = _TIMM.match(value.strip())
        if not match:
            raise ConfigError(f"{key}: expected a timm policy such as 'rand-m9-mstd0.5-inc1' or a mapping, "
                              f"got {value!r}")
        kwargs: dict = {"magnitude": MAX_LEVEL, "magnitude_std": 0.0}  # timm's defaults for a policy string
        increasing = False
        for part in filter(None, match["rest"].split("-")):
            name, num = re.match(r"([a-z]+)(.*)", part).groups()
            try:
                number = float(num)
            except ValueError:
                raise ConfigError(f"{key}: '{part}' in {value!r} has no number") from None
            if name == "m":
                kwargs["magnitude"] = number
            elif name == "n":
                kwargs["num_ops"] = int(number)
            elif name == "mstd":
                kwargs["magnitude_std"] = number
            elif name == "p":
                kwargs["prob"] = number
            elif name == "inc":
                increasing = number == 1
            else:
                raise ConfigError(f"{key}: unknown part '{part}' in {value!r} (nasx reads m, n, mstd, p, inc1)")
        if not increasing:
            raise ConfigError(f"{key}: {value!r} asks for timm's non-increasing op set; nasx has only the increasing "
                              f"one: add '-inc1' (AutoFormer's 'rand-m9-mstd0.5-inc1')")
        return RandAugment(**kwargs, key=key)
    raise ConfigError(f"{key}: expected null, a mapping or a timm policy string, got {value!r}")
