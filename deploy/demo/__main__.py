import sys

from deploy.demo.demo import main

sys.exit(main())
