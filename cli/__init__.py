"""The `lsdm` command line, one module per command group (``main.py`` composes them): a presentation
layer over the engine, like the dashboard; it draws the evaluation report's figures (``report_figures``)."""
