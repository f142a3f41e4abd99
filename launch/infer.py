"""Classify a collection on the cluster: `python launch/infer.py CHECKPOINT --input SRC --out DIR [...]`, the options
of `videoiq infer`, for `ray job submit` (which runs a script from the working directory)."""
import sys

from videoiq.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["infer", *sys.argv[1:]]))
