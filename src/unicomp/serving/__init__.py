"""Many tasks on one frozen backbone: a finished FPT run's trained parameters as an adapter
file (``adapters``: ``export_adapter``, ``load_adapter``), the tasks' natural input forms
(``codecs``) and the HTTP server over them (``serve``: ``unicomp serve``)."""
