"""Image folders as LitData shards: ``convert`` writes them, ``read`` serves their samples by index."""
