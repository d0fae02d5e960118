"""Make a Docker build context that wraps a cvsjepa run as a SAGES CVS Challenge 2024 container.

    python scripts/sages_container/export_run.py RUN CONTEXT_DIR

Then build the wheel into CONTEXT_DIR/dist and run `docker build` (see the Dockerfile's header and
docs/predict.md). This script only copies files: it builds and runs nothing.
"""

import sys
from pathlib import Path

from cvsjepa.predict.container import export_container_context


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = export_container_context(argv[0], argv[1], recipe=Path(__file__).resolve().parent)
    print(f"build context written to {out}; next:\n  pip wheel . --no-deps -w {out}/dist\n"
          f"  docker build -t cvsjepa-sages {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
