import sys

from gradest.cli import main

sys.exit(main())
