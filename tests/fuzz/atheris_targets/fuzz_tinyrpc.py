"""atheris target: the tinyrpc codec (tests/fuzz/target.py says what is checked)."""

from tests.fuzz.atheris_targets.common import main

if __name__ == "__main__":
    main("tinyrpc")
