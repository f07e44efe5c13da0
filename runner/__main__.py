"""`python -m runner` is the `syncrun` command; `start` is the `syncrun` script's entry point too.

Ctrl-C while Python still imports syncrun's modules (the first ~0.3 s) ends it as Ctrl-C during
start-up does: exit 130, no traceback (review revF F8). Caught here, around the import, since no
handler inside those modules exists yet; the import itself is unchanged (nothing else loads here).
"""


def start() -> int:
    try:
        from runner.cli import main

        return main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(start())
