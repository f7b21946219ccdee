"""Run ``appliance ARGS...`` in this process and write its peak RSS to a file (bench/node.py).

    python bench/_node_sync_child.py RSS_FILE node sync --trust ... --peer ...
    python bench/_node_sync_child.py RSS_FILE --imports-only

The peak is ``VmHWM`` of /proc/self/status, read when the command has returned: the high-water
mark of this program's own address space. (``ru_maxrss`` of a child, from wait4, is no good
here: Linux carries the parent's resident size at fork into the child's figure, so a small
child of a big benchmark process reports the benchmark's size.) ``--imports-only`` imports
what ``appliance node sync`` imports and exits: the baseline of the same interpreter doing no
sync. The exit status is the command's.
"""

from __future__ import annotations

import sys
from pathlib import Path


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    status = 0
    try:
        if args == ["--imports-only"]:
            import aiohttp  # noqa: F401

            import appliance.cli  # noqa: F401
            import appliance.node.cli  # noqa: F401
            import appliance.node.client  # noqa: F401
            import appliance.node.discovery  # noqa: F401
            import appliance.node.store  # noqa: F401
            import appliance.node.sync  # noqa: F401
        else:
            from appliance.cli import main as appliance_main

            status = appliance_main(args)
    finally:
        out.write_text(f"{peak_rss_kib()}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
