import sys

from pretrain import cli
from runner.cli import main_for

sys.exit(main_for("pretrain", cli))
