"""``python -m plmkit`` runs the ``plmkit`` command."""

import sys

from plmkit.cli import main

sys.exit(main())
