"""Classify product photographs into catalogue categories; compare models; promote the best by rule."""

__version__ = "0.1.0"
