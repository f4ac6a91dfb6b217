"""Data: ``modules/`` (the LightningDataModules), ``datasets/`` (one file per dataset), ``formats/``
(IDX, CIFAR pickles, image trees, the decoded-array cache), ``shards/`` (LitData), ``protocol``
(what the rest of kdlight may use of a data module), ``augment`` and ``subsets``."""
