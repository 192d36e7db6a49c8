import sys

from runner.cli import main_for
from synth import cli

sys.exit(main_for("synth", cli))
