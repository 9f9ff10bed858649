import sys

from nexpy.cli import main

sys.exit(main())
