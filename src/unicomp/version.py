"""The package's version (``unicomp.__version__``), in a module of its own so that the modules
that record it (provenance, feature caches, adapters) need not import the public API."""

__version__ = "0.1.0"
