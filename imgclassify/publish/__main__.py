"""``python -m imgclassify.publish``: the publisher's command line."""

import sys

from .cli import main

sys.exit(main())
