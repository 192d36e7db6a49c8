import sys

from influence import cli
from runner.cli import main_for

sys.exit(main_for("influence", cli))
