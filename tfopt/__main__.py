"""``python -m tfopt``: the ``tfopt`` command, for an environment whose scripts folder is not on the PATH.

>>> python -m tfopt export model.keras --quantization int4  # doctest: +SKIP
"""

import sys

from tfopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
