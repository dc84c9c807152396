import sys

from compembed.cli.main import main

sys.exit(main())
