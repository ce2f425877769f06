"""`python -m realm.cli ...` (what torchrun and the refresh worker launch)."""

import sys

from realm.cli import main

sys.exit(main())
