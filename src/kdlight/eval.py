"""``python -m kdlight.eval +run=DIR`` or ``+experiment=NAME +weights=PATH`` (see :mod:`kdlight.cli.eval`)."""

from kdlight.cli.eval import main

if __name__ == "__main__":
    main()
