import sys

from pipeline.cli import main

sys.exit(main(["influence", *sys.argv[1:]]))
