"""THINKSAFE: self-generated safety alignment for reasoning models."""

__version__ = "0.1.0"
