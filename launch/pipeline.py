"""Run fp -> ap, policy_pretrain, policy and eval, handing the checkpoints on, and print the result table.

    python launch/pipeline.py --fp F.yaml --ap A.yaml --policy-pretrain P.yaml --policy Q.yaml --eval E.yaml \
        [--set data.root=/data/anet ...]
"""
from videoiq.launchers import pipeline_main

if __name__ == "__main__":
    raise SystemExit(pipeline_main())
