"""``python -m common.report RUN_DIR``: the report of a run directory."""
import sys

from common.report.build import main

sys.exit(main())
