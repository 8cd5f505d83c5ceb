"""Log-bilinear softmax models: the (deep) unconstrained features model, batched over independent runs."""

from implicit_geometry.models.ufm import Chain, DeepUFM

__all__ = ["Chain", "DeepUFM"]
