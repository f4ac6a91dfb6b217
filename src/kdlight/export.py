"""``python -m kdlight.export``: the same command as ``kdlight-export`` (:mod:`kdlight.cli.export`)."""

import sys

from kdlight.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
