"""wandb tracking: the mode a setting means, offline runs written and resumed, and no network ever."""
import pytest

from videoiq.tracking import Tracker, TrackingError, resolve_mode

from wandb_offline import read_runs


@pytest.mark.parametrize("setting, env, expected", [
    ("auto", {}, "offline"),  # no key: never wait on the network
    ("auto", {"WANDB_API_KEY": "k"}, "online"),
    ("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),  # the environment wins
    ("auto", {"WANDB_MODE": "disabled"}, "disabled"),
    ("auto", {"WANDB_MODE": "dryrun"}, "offline"),
    ("offline", {"WANDB_API_KEY": "k"}, "offline"),
    ("disabled", {}, "disabled"),
])
def test_resolve_mode(setting, env, expected):
    assert resolve_mode(setting, env) == expected


def test_online_without_a_key_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(TrackingError, match="online needs WANDB_API_KEY"):
        Tracker.start(mode="online", directory=tmp_path, project="p", name="fp", job_type="fp", group=None, config={})
    assert not (tmp_path / "wandb").exists()


def test_disabled_tracker_writes_nothing(tmp_path):
    with Tracker.start(mode="disabled", directory=tmp_path, project="p", name="fp", job_type="fp", group=None,
                       config={}) as tracker:
        tracker.log({"epoch": 1, "val/top1": 50.0})
        tracker.table("t", ["a"], [[1]])
    assert not tracker.active and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_offline_run_is_written_and_a_restart_resumes_its_id(tmp_path):
    def run(epochs):
        with Tracker.start(mode="offline", directory=tmp_path, project="p", name="fp", job_type="fp", group="g",
                           config={"optim": {"lr": 0.1}}) as tracker:
            for epoch in epochs:
                tracker.log({"epoch": epoch, "val/top1": 10.0 * epoch})
            tracker.summary({"val/top1": 10.0 * epochs[-1]})
            tracker.table("val/per_class_ap", ["class", "AP %", "videos"], [["a", 50.0, 2], ["b", None, 0]])

    run([1, 2])
    run([3])  # a resumed stage
    first, second = read_runs(tmp_path)
    assert first.run_id == second.run_id == (tmp_path / "wandb-fp.id").read_text().strip()
    assert (first.name, first.group, first.job_type, first.config["optim"]) == ("fp", "g", "fp", {"lr": 0.1})
    assert [r["val/top1"] for r in first.history if "val/top1" in r] == [10.0, 20.0]
    assert second.summary["val/top1"] == 30.0 and second.summary["val/per_class_ap/nrows"] == 2
    tables = list(tmp_path.rglob("per_class_ap_*.table.json"))
    assert len(tables) == 2
