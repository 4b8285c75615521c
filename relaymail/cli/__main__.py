"""``python -m relaymail.cli``: the same as the ``relaymail`` command."""

import sys

from relaymail.cli.main import main

sys.exit(main())
