"""Run (or continue) a Ray Tune sweep of the policy stage and write its Pareto report.

    python launch/tune.py --sweep tune_configs/<file>.yaml [--storage-path DIR]
"""
from videoiq.launchers import tune_main

if __name__ == "__main__":
    raise SystemExit(tune_main())
