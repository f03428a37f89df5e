"""``python -m medsec.agent --root DIR [--verbose]``: the agent alone, as the supervisor starts it.

The full ``medsec`` CLI imports the server and gateway code as well; a restarted agent should
be back watching the device as fast as possible (RL-1), so the supervised child skips it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medsec.agent.config import AgentConfig
from medsec.agent.daemon import run_agent
from medsec.errors import Error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsec.agent", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="the device root folder")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s agent[{args.root.name}] %(levelname)s %(message)s",
    )
    try:
        run_agent(AgentConfig.load(args.root))
    except Error as e:
        print(f"error: {e.diagnostics()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
