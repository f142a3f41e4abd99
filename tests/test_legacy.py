"""The original README commands translate to the shipped stage YAMLs; bad commands are named errors."""
from pathlib import Path

import pytest

from videoiq.config import config_to_dict, load_config
from videoiq.legacy import LegacyFlagError, translate_legacy

from legacy_commands import README_COMMANDS, command

CONFIGS = Path(__file__).resolve().parents[1] / "launch" / "configs"
# Values that are paths or run names in a command and are set with --set on a shipped YAML.
RUN_SPECIFIC = ("data.root", "run.storage_path", "run.name", "init.backbone_checkpoint",
                "init.policy_backbone_checkpoint", "init.imagenet_weights", "eval.checkpoint")


def _with_run_specific(path, translated):
    overrides = [f"{k}={translated.get(k)}" for k in RUN_SPECIFIC if _has(translated, k)]
    return load_config(path, [o.replace("=None", "=null") for o in overrides])


def _has(cfg, key):
    try:
        cfg.get(key)
    except AttributeError:
        return False
    return True


@pytest.mark.parametrize("name", list(README_COMMANDS))
def test_readme_command_translates_to_the_shipped_yaml(name):
    yaml_name, _ = README_COMMANDS[name]
    translated = translate_legacy(command(name)).config
    assert config_to_dict(_with_run_specific(CONFIGS / yaml_name, translated)) == config_to_dict(translated)


def test_test_command_training_flags_give_the_mini_sports1m_policy_yaml():
    text = command("eval").replace("test_ada.py", "train_dist_ada.py").replace(
        " -e --pretrained runs/policy/checkpoint.pt", "")
    translated = translate_legacy(text).config
    shipped = _with_run_specific(CONFIGS / "policy_r50-b32-4-2-skip1_mini-sports1m.yaml", translated)
    assert config_to_dict(shipped) == config_to_dict(translated)


def test_translations_carry_the_seed_recipe():
    # the original's argument defaults, read independently of the translator
    ap = translate_legacy(command("ap")).config
    assert ap.quant.bit_widths == (32, 4, 2) and ap.quant.clip_init == 2.0
    assert ap.optim.clip_lr == {32: 0.1, 4: 0.1, 2: 0.01} and ap.optim.clip_weight_decay == {32: 5e-4, 4: 5e-4, 2: 0.06}
    assert (ap.optim.lr, ap.optim.epochs, ap.data.batch_size) == (0.01, 100, 72)
    assert ap.init.backbone_checkpoint == "runs/fp/checkpoint.pt"
    policy = translate_legacy(command("policy")).config
    assert policy.policy.precisions == (4, 2) and policy.policy.fp_action and policy.policy.skip_choices == ()
    assert (policy.loss.efficiency_weight, policy.loss.balance_weight, policy.loss.entropy_weight) == (0.16, 1.0, 0.0)
    assert (policy.optim.policy_lr, policy.optim.policy_backbone_lr, policy.optim.epochs) == (0.01, 1e-5, 50)
    assert policy.init.backbone_checkpoint == "runs/ap/checkpoint.pt"
    mbv2 = translate_legacy(command("policy_pretrain")).config
    assert mbv2.model.name == "mobilenet_v2" and mbv2.optim.epochs == 100


def test_absent_flags_take_the_original_defaults():
    cfg = translate_legacy("python train_dist.py --dataset fcvid --backbone_net resnet --use_lmdb").config
    # opts.py: -d 18, -b 256, --epochs 50, --lr 0.01, scale-up on unless --disable_scaleup
    assert (cfg.model.name, cfg.data.batch_size, cfg.optim.epochs, cfg.data.scale_up) == ("resnet18", 256, 50, True)


def test_notes_warn_about_the_original_traps():
    notes = " ".join(translate_legacy(command("policy")).notes)
    assert "must be the *ap* stage's checkpoint" in notes
    assert "truncated from the master width stored in the ap checkpoint" in notes
    eval_notes = " ".join(translate_legacy(command("eval")).notes)
    assert "eval.decisions=sampled" in eval_notes


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--dataset activitynet --backbone_net resnet --swap", "unknown flag '--swap'"),
        ("--backbone_net resnet", "--dataset is required"),
        ("--dataset activitynet", "--backbone_net is required"),
        ("--dataset activitynet --backbone_net s3d", "expected one of"),
        ("--dataset activitynet --backbone_net resnet_pact_ap --w_bit_width_family 8 4 --a_bit_width_family 4 2",
         "ties weight and activation widths"),
        ("--dataset activitynet --backbone_net resnet_pact_ap --w_bit_width_family 8 4 --a_bit_width_family 8 4 "
         "--q_lr 0.1 0.2 0.3", "needs one value per bit width"),
        ("--dataset activitynet --backbone_net resnet_videoiq --p_bit 8", "--p_bit"),
        ("--dataset activitynet --backbone_net resnet_videoiq -e", "needs --pretrained"),
        ("--dataset activitynet --backbone_net resnet --lr_scheduler step", "cosine schedule only"),
        ("--dataset activitynet --backbone_net resnet -b", "takes one value"),
        ("--dataset activitynet --backbone_net resnet --use_lmdb yes", "takes no value"),
        ("python train.py --dataset activitynet --backbone_net resnet", "unknown script"),
        ("python train_dist_ap.py --dataset activitynet --backbone_net resnet", "does not train"),
    ],
)
def test_untranslatable_commands_are_named_errors(flags, message):
    with pytest.raises(LegacyFlagError, match=message):
        translate_legacy(flags)
