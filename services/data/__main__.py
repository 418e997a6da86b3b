"""``python -m services.data [--config FILE] [key=value ...]``"""

import sys

from services.common.server import run_service
from services.data.config import DataConfig
from services.data.server import make_register

if __name__ == "__main__":
    sys.exit(run_service("data", DataConfig, sys.argv[1:], make_register))
