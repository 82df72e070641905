"""Passes over the validated IR: shape inference/validation and rewrites."""

from resdsl.passes.shapes import validate

__all__ = ["validate"]
