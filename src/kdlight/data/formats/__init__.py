"""On-disk formats decoded to in-memory datasets: IDX, CIFAR pickles, image trees, the decoded-array cache."""
