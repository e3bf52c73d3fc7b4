"""python -m airtable_gateway [serve|migrate|downgrade|revision] | python -m airtable_gateway emulator [...]"""

import sys


def main() -> int:
    if sys.argv[1:2] == ["emulator"]:
        from airtable_gateway.emulator.cli import main as run_emulator

        return run_emulator(sys.argv[2:])
    print("the Airtable gateway service is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
