"""``python -m recorder.engine``: build (or find in the cache) the native capture engine and say
which engine ``record(engine="auto")`` will use here; exit status 1 when it cannot be built."""

from __future__ import annotations

import sys

from recorder.engine.extension import load


def main() -> int:
    build = load()
    if build.module is None:
        print(f"recorder: native capture engine not available: {build.reason}", file=sys.stderr)
        return 1
    print(f"recorder: native capture engine ready ({build.module.__file__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
