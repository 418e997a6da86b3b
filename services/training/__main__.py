"""``python -m services.training [--config FILE] [key=value ...]``"""

import sys

from services.common.server import run_service
from services.training.config import TrainingConfig
from services.training.server import make_register

if __name__ == "__main__":
    sys.exit(run_service("training", TrainingConfig, sys.argv[1:], make_register))
