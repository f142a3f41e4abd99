"""The five commands of the original VideoIQ README, verbatim but for the <placeholders>, which are
replaced by the fixed paths below so that tests can compare translations with the shipped YAMLs."""

DATA = "/data/{dataset}"
LOGDIR = "runs"
FP_CKPT = "runs/fp/checkpoint.pt"
AP_CKPT = "runs/ap/checkpoint.pt"
MB_CKPT = "runs/policy_pretrain/checkpoint.pt"
POLICY_CKPT = "runs/policy/checkpoint.pt"

# name -> (shipped YAML in launch/configs/, command)
README_COMMANDS = {
    "fp": ("fp_r50_activitynet.yaml", r"""
python train_dist.py --dataset activitynet --frames_per_group 1 --groups 16 --logdir <log_dir_path> \
 --lr 0.01 --backbone_net resnet -d 50 -b 72 -j 36 --without_t_stride --disable_scaleup --epochs 100 \ 
 --multiprocessing-distributed --auto_resume --use_lmdb  --datadir <dataset_path> \ 
"""),
    "ap": ("ap_r50-b32-4-2_activitynet.yaml", r"""
python train_dist_ap.py --dataset activitynet --q_init 2 --backbone_net resnet_pact_ap -d 50 -b 72 -j 36 \ 
--logdir <log_dir_path> --lr 0.01 --epochs 100 --w_bit_width_family 32 4 2 \ 
--a_bit_width_family 32 4 2 --switch_bn --switch_clipval --frames_per_group 1 --groups 16 \ 
--imagenet_path <fp checkpoint path> --auto_resume --is_32fp  --q_lr 0.1 0.1 0.01  \ 
--loss_type KD_CE --q_weight-decay 5e-4 5e-4 6e-2 --multiprocessing-distributed --without_t_stride --disable_scaleup  \ 
--datadir <dataset_path> \ 
"""),
    "policy_pretrain": ("policy-pretrain_mbv2_activitynet.yaml", r"""
python train_dist.py --dataset activitynet --backbone_net mobilenet_v2 -b 72 -j 16 \
--logdir <log_dir_path> --lr 0.01 --epochs 100  --frames_per_group 1 --groups 16 \
--multiprocessing-distributed --without_t_stride --disable_scaleup --auto_resume --datadir <dataset_path> \
"""),
    "policy": ("policy_r50-fp-4-2_activitynet.yaml", r"""
python train_dist_ada.py --dataset activitynet --q_init 4 --backbone_net resnet_videoiq \
-d 50 -b 72 -j 16 --logdir <log_dir_path> --lr 0.0001 --epochs 50 --bit_width_family 4 2 \
--switch_bn --switch_clipval --use_lmdb --frames_per_group 1 --groups 16 --loss_type KD_CE --q_weight-decay 0.0005 0.005 \
--multiprocessing-distributed --without_t_stride --disable_scaleup --p_lr 0.01 --efficient --balanced --efficient_w 0.16 \
--balanced_w 1 --resnet_imagenet_path <fp_recognition_network_path> \
--mobilenet_imagenet_path <mb_net_path> --p_epochs 50 --prefix e1b1_new --use_fp_as_bb \
--is_32fp --auto_resume --is_policy_pred --datadir <dataset_path> \
"""),  # noqa: E501 (the README's lines, verbatim)
    "eval": ("eval_mini-sports1m.yaml", r"""
python test_ada.py --dataset mini-sports1m --q_init 2 --backbone_net resnet_adaptive_quant2 -d 50 -b 72 -j 36 \
 --logdir <log_dir_path>  --lr 0.0001 --epochs 50 --bit_width_family 32 4 2 --switch_bn --switch_clipval \
 --frames_per_group 1 --groups 16 --loss_type KD_CE --q_weight-decay 5e-4 5e-4 6e-2  \
 --multiprocessing-distributed --without_t_stride --disable_scaleup --p_lr 0.1 --efficient --balanced \
 --efficient_w 0.16 --balanced_w 0.5 --resnet_imagenet_path <fp_recognition_network_path> \
 --mobilenet_imagenet_path <fp_mb_path>  --is_32fp --auto_resume --is_policy_pred --entropy --entropy_w 0.1 \
 --p_b_lr 0.001 --q_lr 0.1 0.1 0.01  --skip_list 1 --datadir <dataset path> -e --pretrained <checkpoint path> \
"""),
}

_PLACEHOLDERS = {
    "<log_dir_path>": LOGDIR,
    "<fp checkpoint path>": FP_CKPT,
    "<fp_recognition_network_path>": AP_CKPT,  # the README's label is wrong: it must be the ap checkpoint
    "<mb_net_path>": MB_CKPT,
    "<fp_mb_path>": MB_CKPT,
    "<checkpoint path>": POLICY_CKPT,
}


def command(name: str) -> str:
    """The README command ``name`` with its placeholders filled in."""
    text = README_COMMANDS[name][1]
    dataset = "mini-sports1m" if name == "eval" else "activitynet"
    for k, v in {**_PLACEHOLDERS, "<dataset_path>": DATA.format(dataset=dataset),
                 "<dataset path>": DATA.format(dataset=dataset)}.items():
        text = text.replace(k, v)
    return text
