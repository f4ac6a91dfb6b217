"""``python -m kdlight.analyze``: the same command as ``kdlight-analyze`` (:mod:`kdlight.cli.analyze`)."""

import sys

from kdlight.cli.analyze import main

if __name__ == "__main__":
    sys.exit(main())
