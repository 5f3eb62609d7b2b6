"""Surgery: from a decision to a dense model (slice), and the model changes methods make during
training (a sub-network, a restricted space, widening)."""
from .channels import SliceError
from .slice import slice_model

__all__ = ["SliceError", "slice_model"]
