"""`python -m igllama api ...`"""

import sys

from igllama.cli import main

sys.exit(main())
