"""``python -m csi.cli``: the ``localcsi`` command."""

from csi.cli.main import main

raise SystemExit(main())
