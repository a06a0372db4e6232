"""`python -m esg.sim report ...`: see `esg.sim.cli`."""

import sys

from esg.sim.cli import main

sys.exit(main())
