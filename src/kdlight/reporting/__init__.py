"""A folder of runs as a table and plots; the figures every part of kdlight draws.

- :mod:`kdlight.reporting.collect`: find the run folders under a root, read each one's record;
- :mod:`kdlight.reporting.table`: group runs by configuration, mean and std over seeds;
- :mod:`kdlight.reporting.figures`: heat maps and curves over the swept hyper-parameters;
- :mod:`kdlight.reporting.render`: ``results.csv`` and ``report.md``;
- :mod:`kdlight.reporting.text`: how values are written in them;
- :mod:`kdlight.reporting.report`: :func:`~kdlight.reporting.report.build_report`, all of it;
- :mod:`kdlight.reporting.plots`: matplotlib figures (also used by the analysis and notebooks).

Its command line is :mod:`kdlight.cli.report`.
"""
