import sys

from navi_actor.cli import main

sys.exit(main())
