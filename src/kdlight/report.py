"""``python -m kdlight.report``: the same command as ``kdlight-report`` (:mod:`kdlight.cli.report`)."""

import sys

from kdlight.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
