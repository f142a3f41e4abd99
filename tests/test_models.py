"""Every registered model builds, runs and trains; VideoIQ mixes precisions as the spec says."""
import pytest
import torch
import torchvision

from videoiq.models import PolicyNet, VideoIQ, create_model, list_models
from videoiq.quant import bit_width

VIDEO = (2, 3, 3, 32, 32)  # (B, T, C, H, W)
# the 50- and 101-layer ResNets take a second or more each on a CPU core; the smaller ones test the same code
RECOGNITION = [pytest.param(name, marks=pytest.mark.slow) if name.endswith(("50", "101")) else name
               for name in list_models(kind="recognition")]


@pytest.mark.parametrize("name", RECOGNITION)
def test_recognition_model_shape_and_gradients(name):
    model = create_model(name, num_classes=7).train()
    out = model(torch.randn(VIDEO))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    # At the master width only the other widths' BNs and clips see no gradient.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    inactive = [n for n in no_grad if ".bn.4." in n or ".bn.2." in n or ".alpha.4" in n or ".alpha.2" in n]
    assert no_grad == inactive, [n for n in no_grad if n not in inactive][:5]


def test_any_precision_model_trains_every_width():
    model = create_model("ap_resnet_tiny", num_classes=5).train()
    video = torch.randn(VIDEO)
    loss = 0
    for b in (32, 4, 2):
        with bit_width(model, b):
            loss = loss + model(video).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_widths_give_different_outputs_from_one_master_weight():
    model = create_model("ap_resnet_tiny", num_classes=5).eval()
    video = torch.randn(VIDEO)
    outs = {}
    for b in (32, 4, 2):
        with bit_width(model, b):
            outs[b] = model(video)
    assert not torch.allclose(outs[32], outs[4]) and not torch.allclose(outs[4], outs[2])


def test_tsn_consensus_is_the_mean_of_frame_logits():
    model = create_model("resnet_tiny", num_classes=4).eval()
    video = torch.randn(VIDEO)
    per_frame = torch.stack([model(video[:, t : t + 1]) for t in range(VIDEO[1])], dim=1)
    assert torch.allclose(model(video), per_frame.mean(1), atol=1e-6)


def test_video_input_rank_is_checked():
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        create_model("resnet_tiny", num_classes=2)(torch.randn(2, 3, 32, 32))


def test_unknown_model_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'resnet50'"):
        create_model("resnet05")


def test_mobilenet_matches_torchvision_frame_average():
    tv = torchvision.models.mobilenet_v2(num_classes=6).eval()
    ours = create_model("mobilenet_v2", num_classes=6).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)  # identical key names
    video = torch.randn(2, 2, 3, 64, 64)
    with torch.no_grad():
        expected = tv(video.flatten(0, 1)).view(2, 2, -1).mean(1)
        assert torch.allclose(ours(video), expected, atol=1e-5)


def _policy(num_precisions=3, skips=(), **kw):
    return create_model("policy_mobilenet_v2_tiny", num_precisions=num_precisions, skip_choices=skips, **kw)


def test_policy_deterministic_decisions_are_argmax_one_hot():
    policy = _policy(num_classes=5).eval()
    out = policy(torch.randn(2, 4, 3, 32, 32))
    assert out.decisions.shape == (2, 4, 3) and out.logits.shape == (2, 5)
    assert torch.equal(out.decisions, torch.nn.functional.one_hot(out.log_probs.argmax(-1), 3).float())
    assert (out.log_probs <= 0).all()
    assert torch.allclose(out.log_probs.exp().sum(-1), torch.ones(2, 4), atol=1e-5)


def test_policy_samples_are_one_hot_with_straight_through_gradients():
    policy = _policy().train()
    policy.set_temperature(1.0)
    out = policy(torch.randn(3, 4, 3, 32, 32))
    assert torch.equal(out.decisions.detach().sum(-1), torch.ones(3, 4))
    assert set(out.decisions.detach().unique().tolist()) <= {0.0, 1.0}
    (out.decisions * torch.randn(3))[..., 0].sum().backward()
    assert policy.linear.weight.grad.abs().sum() > 0


def test_policy_skip_carries_decision_and_log_probs():
    torch.manual_seed(3)
    policy = _policy(num_precisions=2, skips=(1, 3)).train()
    policy.set_temperature(5.0)  # high temperature: varied samples, skips chosen often
    skip_len = {2: 1, 3: 3}
    out = policy(torch.randn(16, 8, 3, 32, 32))
    actions = out.decisions.argmax(-1)
    carried = 0
    for b in range(16):
        remaining = 0
        for t in range(8):
            if remaining > 0:
                assert actions[b, t] == actions[b, t - 1]
                assert torch.equal(out.log_probs[b, t], out.log_probs[b, t - 1])
                carried += 1
            elif actions[b, t].item() in skip_len:
                remaining = skip_len[actions[b, t].item()]
            remaining = max(remaining - 1, 0)
    assert carried > 0  # the case under test did happen


def test_policy_aux_classifier_averages_lstm_outputs_before_the_skip_carry():
    torch.manual_seed(0)
    policy = _policy(num_precisions=2, skips=(3,), num_classes=4).eval()
    with torch.no_grad():
        policy.linear.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # always skip 3 frames: steps 1, 2, 4, 5 carry
    video = torch.randn(2, 6, 3, 32, 32)
    out = policy(video)
    assert out.decisions.argmax(-1).eq(2).all()
    feats = policy.frame_features(video)
    h = c = torch.zeros(2, policy.rnn.hidden_size)
    raw, kept = [], []
    for t in range(6):
        h_new, c = policy.rnn(feats[:, t], (h, c))
        raw.append(h_new)
        h = h if t % 3 else h_new  # the carry of a running skip
        kept.append(h)
    expected = policy.fc(torch.stack(raw, 1).mean(1))
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert not torch.allclose(out.logits, policy.fc(torch.stack(kept, 1).mean(1)), atol=1e-4)


def test_policy_convs_use_the_pretrained_weights_as_they_are():
    # A deliberate difference from the original, whose policy passes its first and last conv weights through
    # the DoReFa normalisation tanh(w)/max|tanh(w)| even at 32 bits: here the stage-3 MobileNetV2 computes the
    # same features inside the policy as it did when it was trained.
    mobilenet = create_model("mobilenet_v2_tiny", num_classes=3).eval()
    policy = PolicyNet(mobilenet, 2, input_size=32).eval()
    video = torch.randn(2, 3, 3, 48, 48)
    resized = torch.nn.functional.interpolate(video.flatten(0, 1), size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(policy.frame_features(video), mobilenet.forward_features(resized.view(2, 3, 3, 32, 32)))


def test_policy_rejects_bad_arguments():
    backbone = create_model("mobilenet_v2_tiny")
    with pytest.raises(ValueError, match="skip choices"):
        PolicyNet(backbone, 2, (0,))
    with pytest.raises(ValueError, match="temperature"):
        PolicyNet(backbone, 2, temperature=0)


def _videoiq(fp_action=False, precisions=None, skips=(1,)):
    backbone = create_model("ap_resnet_tiny", num_classes=5)
    teacher = create_model("resnet_tiny", num_classes=5)
    n = len(precisions or (32, 4, 2)) + int(fp_action)
    policy = _policy(num_precisions=n, skips=skips, num_classes=5)
    return VideoIQ(backbone, policy, precisions=precisions, teacher=teacher, fp_action=fp_action).eval()


@pytest.mark.parametrize("action, bits", [(0, 32), (1, 4), (2, 2)])
def test_forced_precision_equals_the_backbone_at_that_width(action, bits):
    model = _videoiq()
    video = torch.randn(VIDEO)
    out = model(video, forced_actions=torch.full(VIDEO[:2], action))
    with bit_width(model.backbone, bits):
        expected = model.backbone(video)
    assert torch.allclose(out.logits, expected, atol=1e-6)


def test_fp_action_runs_teacher_features_through_the_shared_fc():
    model = _videoiq(fp_action=True, precisions=(4, 2), skips=())
    assert model.actions == ("fp", "4bit", "2bit")
    video = torch.randn(VIDEO)
    out = model(video, forced_actions=torch.zeros(VIDEO[:2], dtype=torch.long))
    expected = model.backbone.forward_head(model.teacher.forward_features(video))
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert torch.allclose(out.teacher_logits, model.teacher(video), atol=1e-6)


def test_skipped_frames_are_left_out_of_the_average():
    model = _videoiq()
    video = torch.randn(VIDEO)
    forced = torch.tensor([[0, 3, 2], [3, 3, 3]])  # sample 1 skips every frame
    out = model(video, forced_actions=forced)
    bb = model.backbone
    f32 = bb.forward_features(video[:1, :1])
    with bit_width(bb, 2):
        f2 = bb.forward_features(video[:1, 2:])
    expected0 = bb.fc(torch.cat([f32, f2], dim=1).mean(1))
    assert torch.allclose(out.logits[0], expected0[0], atol=1e-5)
    assert torch.allclose(out.logits[1], bb.fc.bias, atol=1e-6)  # all skipped: the bias alone


def test_kept_frames_kd_target_is_the_teacher_on_the_frames_kept():
    model = _videoiq()
    video = torch.randn(VIDEO)
    forced = torch.tensor([[0, 3, 2], [3, 1, 3]])  # keep frames 0 and 2 of video 0, frame 1 of video 1
    out = model(video, forced_actions=forced)
    assert torch.allclose(out.kept_target_logits[0], model.teacher(video[:1, [0, 2]])[0], atol=1e-5)
    assert torch.allclose(out.kept_target_logits[1], model.teacher(video[1:, [1]])[0], atol=1e-5)
    assert torch.allclose(out.teacher_logits, model.teacher(video), atol=1e-6)  # the original's all-frames target
    model.teacher = None  # without a teacher: the first precision on the kept frames
    out = model(video, forced_actions=forced)
    assert torch.allclose(out.kept_target_logits[0], model.backbone(video[:1, [0, 2]])[0], atol=1e-5)


def test_policy_task_distils_from_the_kept_frames_when_asked():
    from videoiq.config import LossSection
    from videoiq.losses import soft_cross_entropy
    from videoiq.train.tasks import PolicyTask

    model = _videoiq()
    out = model(torch.randn(VIDEO), forced_actions=torch.tensor([[0, 3, 2], [3, 1, 3]]))._asdict()
    labels = torch.tensor([1, 2])
    for frames, target in (("all", out["teacher_logits"]), ("kept", out["kept_target_logits"])):
        task = PolicyTask(model, LossSection(kind="kd", teacher=True, kd_frames=frames), 5.0, 0.9)
        assert torch.allclose(task.losses(out, labels)["loss/kd"], soft_cross_entropy(out["logits"], target))


@pytest.mark.parametrize("fp_action, precisions", [(False, None), (True, (4, 2))])
def test_conditional_inference_equals_the_dense_forward(fp_action, precisions):
    model = _videoiq(fp_action=fp_action, precisions=precisions, skips=(1, 2))
    video = torch.randn(3, 6, 3, 32, 32)
    with torch.no_grad():
        dense = model(video)
        logits, decisions = model.infer(video)  # the policy's own (argmax) decisions
        assert torch.equal(decisions, dense.decisions)
        assert torch.allclose(logits, dense.logits, atol=1e-5)
        forced = torch.randint(0, len(model.actions), (3, 6), generator=torch.Generator().manual_seed(1))
        forced[0] = len(model.actions) - 1  # a video that skips every frame: the bias alone
        forced[1] = torch.arange(6) % len(model.actions)  # every action
        logits, _ = model.infer(video, forced_actions=forced)
        assert torch.allclose(logits, model(video, forced_actions=forced).logits, atol=1e-5)
        assert torch.allclose(logits[0], model.backbone.fc.bias, atol=1e-6)


def test_conditional_inference_runs_each_network_once_on_its_frames_only():
    model = _videoiq(fp_action=True, precisions=(4, 2), skips=(1,))  # actions fp, 4bit, 2bit, skip1
    calls = []
    for name, net in (("fp", model.teacher), ("ap", model.backbone)):
        net.frame_features = (lambda f, name=name, orig=net.frame_features: calls.append((name, len(f))) or orig(f))
    forced = torch.tensor([[0, 1, 3, 3], [1, 3, 1, 0]])
    with torch.no_grad():
        model.infer(torch.randn(2, 4, 3, 32, 32), forced_actions=forced)
    assert calls == [("fp", 2), ("ap", 3)]  # 2bit chosen nowhere: not run; the 3 skipped frames: never run


def test_videoiq_gradients_reach_the_policy_in_training():
    model = _videoiq().train()
    model.backbone.requires_grad_(False)
    model(torch.randn(VIDEO)).logits.sum().backward()
    assert model.policy.linear.weight.grad.abs().sum() > 0
    assert model.teacher.training is False  # the frozen teacher stays in eval mode


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(precisions=(8,)), "subset"),
        (dict(precisions=(2, 4)), "order"),
        (dict(fp_action=True, teacher=None), "teacher"),
    ],
)
def test_videoiq_rejects_inconsistent_parts(kwargs, message):
    backbone = create_model("ap_resnet_tiny", num_classes=5)
    policy = _policy(num_precisions=len(kwargs.get("precisions", (1, 1, 1))) + int(kwargs.get("fp_action", False)))
    with pytest.raises(ValueError, match=message):
        VideoIQ(backbone, policy, **kwargs)


def test_videoiq_needs_an_any_precision_backbone_and_matching_policy():
    with pytest.raises(ValueError, match="any-precision"):
        VideoIQ(create_model("resnet_tiny", num_classes=5), _policy())
    with pytest.raises(ValueError, match="4 precision actions"):
        VideoIQ(create_model("ap_resnet_tiny", num_classes=5), _policy(num_precisions=4))
