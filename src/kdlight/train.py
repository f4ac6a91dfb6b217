"""``python -m kdlight.train +experiment=NAME [overrides]``: the entry point (see :mod:`kdlight.cli.train`)."""

from kdlight.cli.train import cli

if __name__ == "__main__":
    cli()
