"""The test analysis of a trained run: computation, rebuilding the run, files, the callback.

- :mod:`kdlight.analysis.metrics`: pure functions of tensors (confusion matrix, ECE, temperature);
- :mod:`kdlight.analysis.load`: rebuild a run's network, teacher and test data from its folder;
- :mod:`kdlight.analysis.write`: :func:`~kdlight.analysis.write.analyze`, the output files;
- :mod:`kdlight.analysis.markdown`: the text of ``analysis.md``;
- :mod:`kdlight.analysis.callback`: the test ECE and confusion matrix in TensorBoard.

Its command line is :mod:`kdlight.cli.analyze`.
"""
