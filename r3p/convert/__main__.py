"""`python -m r3p.convert ...`: see `r3p.convert.cli`."""
import sys

from r3p.convert.cli import main

sys.exit(main())
