"""`python -m esg plan FILE` / `python -m esg split FILE` (see `esg.cli`)."""

from esg.cli import main

raise SystemExit(main())
