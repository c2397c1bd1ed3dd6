"""Tools on runs, above the run folders: the one job runner of every multi-run command
(``jobs``), ``unicomp fpt ablate`` suites (``ablate``), attention maps (``attention``), the
Perceiver's latent-count search (``latent_search``), the demo (``demo``), and a Decision
Transformer run as a transformers model (``export``)."""
