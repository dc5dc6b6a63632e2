"""prefkit: learning from human feedback, the whole loop."""

__version__ = "0.1.0"
