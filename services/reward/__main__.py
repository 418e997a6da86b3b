"""``python -m services.reward [--config FILE] [key=value ...]``"""

import sys

from services.common.server import run_service
from services.reward.config import RewardConfig
from services.reward.server import make_register

if __name__ == "__main__":
    sys.exit(run_service("reward", RewardConfig, sys.argv[1:], make_register))
