"""``python -m wsgiproxy``: the ``wsgiproxy`` command (:mod:`wsgiproxy.cli`)."""

import sys

from wsgiproxy.cli import main

if __name__ == "__main__":
    sys.exit(main())
