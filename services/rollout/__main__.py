"""``python -m services.rollout [--config FILE] [key=value ...]``"""

import sys

from services.common.server import run_service
from services.rollout.config import RolloutConfig
from services.rollout.server import make_register

if __name__ == "__main__":
    sys.exit(run_service("rollout", RolloutConfig, sys.argv[1:], make_register))
