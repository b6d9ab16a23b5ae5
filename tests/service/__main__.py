import sys

from tests.service.run import main

sys.exit(main())
