"""``python -m vmm_exec`` behaves exactly like the ``one-vmm-exec`` console script."""

from vmm_exec.cli import main

raise SystemExit(main())
