import sys

from filter_templates.cli import main

sys.exit(main())
