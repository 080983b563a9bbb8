"""``python -m detloss.report PATH [--out DIR]``, the same as ``detloss-report``."""

from detloss.report.cli import main

raise SystemExit(main())
