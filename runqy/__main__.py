"""``python -m runqy`` is the ``runqy`` command."""

import sys

from runqy.cli import main

sys.exit(main())
