"""Reports on many runs, above the tools they run: ``unicomp reproduce`` (``reproduce``: the
entry point and the running; ``presets``: what each preset runs, as cells; ``evidence``: the
claims' evidence read from the run records; ``claims``: each paper claim and how it is judged,
on the rules of ``verdicts``; ``claims_report``: the report's figures, Markdown and HTML),
the generated tables of README.md and docs/ (``documents``) and the time-series report
(``tsreport``)."""
