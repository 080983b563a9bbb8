"""Report of a run or sweep directory; same as `detloss-report PATH [--out DIR]` (see detloss/report/)."""

from detloss.report import main

if __name__ == "__main__":
    raise SystemExit(main())
