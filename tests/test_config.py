"""Typed stage configs: round trips, every shipped YAML, overrides and clear errors."""
from pathlib import Path

import pytest

from videoiq.config import (
    STAGES,
    ConfigError,
    absolute_paths,
    apply_overrides,
    config_changes,
    config_from_dict,
    config_to_dict,
    default_config,
    load_config,
    save_config,
)

ROOT = Path(__file__).resolve().parents[1]
STAGE_YAMLS = sorted((ROOT / "launch" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("stage", list(STAGES))
def test_defaults_round_trip_through_dict_and_yaml(stage, tmp_path):
    cfg = default_config(stage)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(path) == cfg
    assert config_changes(cfg) == {"stage": stage}


def test_paper_defaults_per_stage():
    ap = default_config("ap")
    assert ap.quant.bit_widths == (32, 4, 2)
    assert ap.optim.clip_lr == {32: 0.1, 4: 0.1, 2: 0.01}
    assert ap.optim.clip_weight_decay == {32: 5e-4, 4: 5e-4, 2: 6e-2}
    assert ap.loss.kind == "kd_ce" and ap.loss.teacher
    policy = default_config("policy")
    assert (policy.optim.epochs, policy.policy.temperature_init, policy.policy.temperature_decay) == (50, 5.0, 0.956)
    assert (policy.policy.input_size, policy.policy.hidden_size, policy.policy.dropout) == (84, 512, 0.8)
    assert policy.loss.efficiency_weight == 0.16
    assert default_config("eval").eval.decisions == "argmax"
    fp = default_config("fp")
    assert (fp.data.num_frames, fp.data.batch_size, fp.optim.lr, fp.optim.epochs) == (16, 72, 0.01, 100)


@pytest.mark.parametrize("path", STAGE_YAMLS, ids=lambda p: p.name)
def test_every_shipped_stage_yaml_loads(path):
    cfg = load_config(path)
    if path.parent.name == "demo":  # demo/<stage>.yaml
        assert cfg.STAGE == path.stem
    else:  # <stage>_<model>_<dataset>.yaml
        assert cfg.STAGE == path.name.split("_")[0].replace("policy-pretrain", "policy_pretrain")


def test_a_partial_section_keeps_the_stage_defaults():
    cfg = config_from_dict({"stage": "policy", "optim": {"epochs": 3}})
    assert cfg.optim.epochs == 3 and cfg.optim.policy_lr == 0.01  # not OptimSection's generic 1e-3
    ap = config_from_dict({"stage": "ap", "optim": {"lr": 0.1}})
    assert ap.optim.clip_weight_decay == {32: 5e-4, 4: 5e-4, 2: 6e-2}


def test_overrides_are_typed_yaml_values():
    data = apply_overrides({"stage": "ap"}, ["optim.lr=1e-3", "quant.bit_widths=[8, 4]",
                                              "optim.clip_lr={8: 0.1, 4: 0.01}",
                                              "optim.clip_weight_decay={8: 0, 4: 0}"])
    cfg = config_from_dict(data)
    assert cfg.optim.lr == 0.001 and cfg.quant.bit_widths == (8, 4) and cfg.optim.clip_lr == {8: 0.1, 4: 0.01}
    policy = config_from_dict(apply_overrides({"stage": "policy"}, ["quant.bit_widths=[32,4,2]"]))
    assert policy.quant.bit_widths == (32, 4, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'; did you mean 'optim.lr'"),
        ("datta.root=x", "did you mean 'data'"),
        ("optim.lr=fast", "optim.lr: expected a finite number, got .fast."),
        ("optim.lr=.nan", "optim.lr: expected a finite number"),
        ("quant.switchable_bn=1", "quant.switchable_bn: expected true or false"),
        ("data.num_frames=2.5", "data.num_frames: expected an integer"),
        ("loss.kind=focal", r"loss.kind: expected one of \['ce', 'kd', 'kd_ce'\]"),
        ("ray.placement_strategy=spread", r"ray.placement_strategy: expected one of \['PACK', 'SPREAD', "),
        ("quant.bit_widths=[32,4,0]", r"bit widths must lie in \[1, 32\], got \[0\]"),
        ("quant.bit_widths=[2,4]", "descending"),
        ("loss.kd_weight=-1", "loss.kd_weight: must be >= 0"),
        ("optim.epochs=0", "optim.epochs: must be >= 1"),
        ("optim.val_every=0", "optim.val_every: must be >= 1"),
        ("optim.clip_lr={32: 0.1}", "optim.clip_lr: needs one value per bit width"),
        ("data.dataset=kinetics", "data.dataset: unknown dataset 'kinetics'"),
        ("model.name=resnet50", "any-precision model"),
        ("stage=fp", "cannot be overridden"),
        ("optim.lr", "expected key=value"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(apply_overrides({"stage": "ap"}, [override]), "ap.yaml")


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"stage": "policy", "loss": {"entropy_weight": -1}, "policy": {"temperature_decay": 2}})
    assert "loss.entropy_weight" in str(e.value) and "policy.temperature_decay" in str(e.value)


def test_cross_section_checks():
    with pytest.raises(ConfigError, match="loss.teacher must be true"):
        config_from_dict({"stage": "policy", "policy": {"fp_action": True}, "loss": {"teacher": False}})
    with pytest.raises(ConfigError, match=r"\[8\] are not in quant.bit_widths"):
        config_from_dict({"stage": "policy", "quant": {"bit_widths": [32, 4]}, "policy": {"precisions": [8]}})
    with pytest.raises(ConfigError, match="plain cross-entropy"):
        config_from_dict({"stage": "fp", "loss": {"kind": "kd"}})
    with pytest.raises(ConfigError, match="loss.kd_frames: the ap stage distils every width on all frames"):
        config_from_dict({"stage": "ap", "loss": {"kd_frames": "kept"}})
    with pytest.raises(ConfigError, match=r"loss.kd_frames: expected one of \['all', 'kept'\]"):
        config_from_dict({"stage": "policy", "loss": {"kd_frames": "some"}})
    assert config_from_dict({"stage": "policy", "loss": {"kd_frames": "kept"}}).loss.kd_frames == "kept"


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("stage: fp\ndata: [unclosed\n", "bad.yaml: not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("data: {}\n", "missing the 'stage' key"),
        ("stage: polcy\n", "did you mean 'policy'"),
        ("stage: fp\noptim: {lr: 0.1, epochs: x}\n", "bad.yaml: optim.epochs: expected an integer"),
    ],
)
def test_file_errors_name_the_file(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


def test_python_objects_in_yaml_are_refused(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("stage: fp\nseed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_input_problems_name_unset_and_missing_paths(tmp_path):
    cfg = config_from_dict({"stage": "policy", "data": {"root": str(tmp_path)},
                            "init": {"backbone_checkpoint": str(tmp_path / "ap.pt")}})
    missing_db = f"data.root: no train.lmdb database in {str(tmp_path)!r} (convert one with `videoiq data build`)"
    assert cfg.input_problems() == [f"init.backbone_checkpoint: {str(tmp_path / 'ap.pt')!r} does not exist",
                                    missing_db, missing_db.replace("train.lmdb", "val.lmdb")]
    assert default_config("eval").input_problems() == ["data.root: not set", "eval.checkpoint: not set"]


def test_data_inputs_are_the_split_databases(tiny_videos):
    fp = config_from_dict({"stage": "fp", "data": {"root": str(tiny_videos), "dataset": "custom"}})
    assert fp.input_problems() == []
    assert fp.data.lmdb_path("val") == str(tiny_videos / "val.lmdb")
    ev = config_from_dict({"stage": "eval", "data": {"root": str(tiny_videos), "val_split": "test"}})
    assert [p for p in ev.input_problems() if p.startswith("data")] == [
        f"data.root: no test.lmdb database in {str(tiny_videos)!r} (convert one with `videoiq data build`)"]


def test_clip_spec_follows_the_data_section():
    from videoiq.data.clips import ClipSpec

    cfg = config_from_dict({"stage": "fp", "data": {"dataset": "mini_kinetics400", "num_frames": 8, "scale_up": True,
                                                     "segment_offsets": "shared", "decoder": "pil",
                                                     "on_error": "skip"}})
    train = ClipSpec.from_config(cfg.data, train=True, num_clips=3)
    assert (train.frames, train.size, train.offsets, train.decoder, train.on_error) == (8, 224, "shared", "pil", "skip")
    assert train.min_frames == 30 and train.views == 1 and train.sample_shape == (8, 3, 224, 224)
    val = ClipSpec.from_config(cfg.data, train=False, num_clips=3, num_crops=3)
    assert val.scale_size == 256 and val.min_frames == 0 and val.sample_shape == (9, 8, 3, 224, 224)
    with pytest.raises(ConfigError, match="data.on_error: expected one of"):
        config_from_dict({"stage": "fp", "data": {"on_error": "ignore"}})


def test_path_fields_are_made_absolute_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {"stage": "policy", "data": {"root": "data", "batch_size": 8},
            "init": {"backbone_checkpoint": "/abs/ap", "policy_backbone_checkpoint": None, "imagenet_weights": ""},
            "run": {"storage_path": "runs/x"}}
    assert absolute_paths(data) is data
    assert data == {"stage": "policy", "data": {"root": str(tmp_path / "data"), "batch_size": 8},
                    "init": {"backbone_checkpoint": "/abs/ap", "policy_backbone_checkpoint": None,
                             "imagenet_weights": ""},
                    "run": {"storage_path": str(tmp_path / "runs/x")}}


def test_every_problem_of_file_and_set_is_listed_at_once_and_blamed_on_its_source(tmp_path):
    path = tmp_path / "fp.yaml"
    path.write_text("stage: fp\ndat: {root: x}\noptim: {lr: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["dat.root=x", "optim.epochs=two"])
    lines = str(e.value).splitlines()
    assert lines[0] == "invalid fp config (3 problems):"
    assert sorted(lines[1:]) == sorted([
        f"  - {path}: dat: unknown key; did you mean 'data'? Valid keys: seed, data, logging, run, ray, speed, "
        "model, optim, loss, init",
        "  - --set 'dat.root=x': unknown key 'dat'; did you mean 'data'? Valid here: seed, data, logging, run, ray, "
        "speed, model, optim, loss, init",
        "  - --set 'optim.epochs=two': optim.epochs: expected an integer, got 'two'"])
    path.write_text("stage: fp\noptim: {lr: 0.1, epochs: x}\n")  # one problem: one line, blamed on the file
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: optim.epochs: expected an integer, got 'x'"


def test_the_old_ray_spelling_of_run_keys_still_works_and_says_once_what_to_use(tmp_path, caplog, monkeypatch):
    import videoiq.config.stages

    monkeypatch.setattr(videoiq.config.stages, "_told", set())  # once per process: forget earlier tests' notices
    path = tmp_path / "fp.yaml"
    path.write_text(f"stage: fp\nray: {{storage_path: {tmp_path / 'runs'}, num_workers: 0}}\n")
    with caplog.at_level("WARNING", logger="videoiq.config"):
        cfg = load_config(path, ["ray.name=old_name", "ray.use_gpu=false"])
        again = load_config(path, ["ray.name=old_name"])
    assert (cfg.run.storage_path, cfg.run.name, cfg.run.use_gpu) == (str(tmp_path / "runs"), "old_name", False)
    assert again.run == cfg.run and cfg.ray.num_workers == 0
    said = [r.getMessage() for r in caplog.records]
    assert said.count(f"{path}: ray.storage_path is now run.storage_path; the old name still works, but use the "
                      "new one") == 1
    assert sum("ray.name is now run.name" in line for line in said) == 1
    assert sum("ray.use_gpu is now run.use_gpu" in line for line in said) == 1
    assert not any("num_workers" in line for line in said)  # ray.num_workers is a Ray key and stays
