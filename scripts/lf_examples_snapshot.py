"""Write tests/clients/lf_examples.py: the keys and values of every training config in a
LLaMA-Factory checkout's examples/ (the files with a ``stage``), for the examples-table test.

    python scripts/lf_examples_snapshot.py /path/to/LLaMA-Factory [COMMIT]

Only the YAML data is recorded (key: value per file); the test writes each back with local paths.
"""

from __future__ import annotations

import pprint
import subprocess
import sys
from pathlib import Path

import yaml


def main() -> int:
    repo = Path(sys.argv[1])
    commit = sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    git = ["git", "-C", str(repo)]
    sha = subprocess.run([*git, "rev-parse", commit], capture_output=True, text=True, check=True)
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", commit, "examples"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    examples = {}
    for name in sorted(n for n in names if n.endswith((".yaml", ".yml"))):
        text = subprocess.run([*git, "show", f"{commit}:{name}"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        data = yaml.safe_load(text)
        if isinstance(data, dict) and "stage" in data:  # a `llamafactory-cli train` config
            examples[name] = data
    out = Path(__file__).resolve().parent.parent / "tests" / "clients" / "lf_examples.py"
    out.write_text(
        f'"""The training configs of LLaMA-Factory\'s examples/ at {sha.stdout.strip()[:12]}: '
        'each file\'s keys and values\n(written by scripts/lf_examples_snapshot.py; data only)."""\n\n'
        f"# fmt: off\nEXAMPLES = {pprint.pformat(examples, width=100, sort_dicts=False)}\n"
    )
    print(f"{len(examples)} training configs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
