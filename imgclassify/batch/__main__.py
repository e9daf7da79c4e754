"""``python -m imgclassify.batch``: the job image's entry point."""

from .cli import main

raise SystemExit(main())
