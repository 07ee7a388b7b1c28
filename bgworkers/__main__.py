from bgworkers.cli import main

raise SystemExit(main())
