import sys

from dlwt.cli import main

sys.exit(main())
