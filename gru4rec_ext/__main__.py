"""`python -m gru4rec_ext`: the `gru4rec` command line."""
import sys

from .cli import main

sys.exit(main())
