"""bedkd: find and remove textual backdoors with BeDKD (arXiv 2508.01595)."""

__version__ = "0.1.0"
