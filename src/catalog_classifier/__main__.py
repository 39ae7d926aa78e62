from catalog_classifier.cli import main

raise SystemExit(main())
