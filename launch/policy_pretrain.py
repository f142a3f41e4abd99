"""Run the `policy_pretrain` stage:
`python launch/policy_pretrain.py --config launch/configs/<file>.yaml [--set KEY=VALUE ...]`."""
from videoiq.launchers import stage_main

if __name__ == "__main__":
    raise SystemExit(stage_main("policy_pretrain"))
