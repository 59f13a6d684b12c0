"""The ``vidsearch`` command line, runnable from a checkout as ``python run_pipeline.py ...``
(the commands live in ``pipeline/cli/``)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
