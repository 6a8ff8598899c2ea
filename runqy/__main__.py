"""``python -m runqy`` is the ``runqy`` command."""

import sys

from runqy.cli.main import main

sys.exit(main())
