import sys

from distill import cli
from runner.cli import main_for

sys.exit(main_for("distill", cli))
