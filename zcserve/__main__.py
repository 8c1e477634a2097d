"""`python -m zcserve` is the `zcserve` command."""

from zcserve.cli import main

raise SystemExit(main())
