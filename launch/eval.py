"""Run the `eval` stage: `python launch/eval.py --config launch/configs/<file>.yaml [--set KEY=VALUE ...]`."""
from videoiq.launchers import stage_main

if __name__ == "__main__":
    raise SystemExit(stage_main("eval"))
