"""``python -m token_broker_client keygen ...``: the same as the ``token-broker-client`` command."""

import sys

from token_broker_client.keygen import main

sys.exit(main())
