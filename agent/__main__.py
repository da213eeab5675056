"""`python -m rgt.agent ...`: the agent's CLI from an installed package (the archive is the normal way)."""

import sys

from rgt.agent.cli import main

sys.exit(main())
