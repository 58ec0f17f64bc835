"""`python -m localdirector`."""

from .cli import main

raise SystemExit(main())
