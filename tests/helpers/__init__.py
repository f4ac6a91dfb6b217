"""One copy of each thing the tests write: tiny data sets, tiny overrides, fake run folders,
hostile pickles. ``tests/conftest.py`` turns them into fixtures; tests import them from here.

- :mod:`tests.helpers.data`: IDX files, MNIST-like sets, image folders and trees, CIFAR-100 pickles.
- :mod:`tests.helpers.overrides`: the overrides that make a run tiny, and the composed config.
- :mod:`tests.helpers.runs`: a run folder as kdlight.train leaves it, and its Lightning checkpoint.
- :mod:`tests.helpers.hostile`: a pickle that would run code when loaded.
"""
