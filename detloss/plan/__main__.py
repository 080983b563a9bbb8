"""``python -m detloss.plan [overrides]``, the same as ``detloss-plan``."""

from detloss.plan.cli import main

main()
