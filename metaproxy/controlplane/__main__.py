"""``python -m metaproxy.controlplane``: the same as ``metaproxy control-plane``."""

import sys

from metaproxy.controlplane import main

sys.exit(main(sys.argv[1:]))
