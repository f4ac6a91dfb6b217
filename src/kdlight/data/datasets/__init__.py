"""One file per dataset: where its files are looked for, and its data module."""
