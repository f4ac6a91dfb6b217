"""Exporting a trained student for the edge, and the deployment report.

- :mod:`kdlight.deploy.plan`: which networks (a run's, or a zoo model and a weights file);
- :mod:`kdlight.deploy.measure`: parameters, MACs, batch-1 CPU latency;
- :mod:`kdlight.deploy.convert`: ONNX and TorchScript files, each checked against PyTorch;
- :mod:`kdlight.deploy.export`: :func:`~kdlight.deploy.export.export`, the whole pipeline;
- :mod:`kdlight.deploy.render`: ``deployment.md`` and the terminal table.

Its command line is :mod:`kdlight.cli.export`.
"""
