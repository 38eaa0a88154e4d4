"""Pieces every training loop shares (the VI fit, flow matching, discrete
flow matching, image training): the error a non-finite loss raises.

This module sits below every family so that each loop can import it
without importing another family.
"""

from __future__ import annotations

__all__ = ["NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN or infinite during training."""
