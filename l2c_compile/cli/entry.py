"""The ``l2c-compile`` console script: Ctrl-C from the first moment is one line and exit 130.

Importing the commands imports torch (seconds); the interrupt handler is installed before that,
so an early Ctrl-C is reported like any other (``cli/interrupts.py``) instead of as a traceback.
"""

from __future__ import annotations


def main() -> None:
    """Install the interrupt handler, then run the command line."""
    from l2c_compile.cli import interrupts

    interrupts.install()
    try:
        from l2c_compile.cli.main import main as run

        run()
    except KeyboardInterrupt as exc:
        interrupts.exit_interrupted(exc)
    except Exception as exc:
        if interrupts.requested():  # an import the interrupt cut short, failing another way
            interrupts.exit_interrupted(exc)
        raise


if __name__ == "__main__":
    main()
