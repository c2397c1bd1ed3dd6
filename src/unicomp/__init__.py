"""unicomp: one pretrained sequence model as a universal computation engine."""

__version__ = "0.1.0"
