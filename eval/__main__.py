import sys

from eval import cli
from runner.cli import main_for

sys.exit(main_for("eval", cli))
