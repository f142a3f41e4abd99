"""TSN frame sampling and the group transforms."""
import numpy as np
import pytest
import torch

from videoiq.data.sampling import eval_indices, train_indices
from videoiq.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    fixed_offsets,
    multiscale_crop_box,
    normalize,
)


@pytest.mark.parametrize("offsets", ["independent", "shared"])
def test_train_indices_fall_in_their_segments(offsets):
    rng = np.random.default_rng(0)
    for n in (16, 17, 50, 333):
        for _ in range(20):
            idx = train_indices(n, 16, 1, rng, offsets)
            seg = n // 16
            assert idx.shape == (16,) and (np.diff(idx) > 0).all()
            assert ((idx // seg)[:16] == np.arange(16)).all() or seg == 0


def test_shared_offsets_repeat_and_independent_ones_vary():
    rng = np.random.default_rng(1)
    shared = train_indices(160, 16, 1, rng, "shared")
    assert len(set(shared % 10)) == 1  # one offset for every segment (the original's sampler)
    seen = {tuple(train_indices(160, 16, 1, rng, "independent") % 10) for _ in range(5)}
    assert any(len(set(s)) > 1 for s in seen)


def test_frames_per_segment_are_distinct_within_a_segment():
    idx = train_indices(64, 4, 3, np.random.default_rng(2))
    assert idx.shape == (12,)
    for k in range(4):
        part = idx[3 * k:3 * k + 3]
        assert len(set(part)) == 3 and (part // 16 == k).all()


def test_short_videos_draw_sorted_frames_with_repeats():
    idx = train_indices(5, 16, 1, np.random.default_rng(3))
    assert idx.shape == (16,) and (np.diff(idx) >= 0).all() and idx.min() >= 0 and idx.max() <= 4


def test_eval_indices_are_segment_centres_and_deterministic():
    n, t = 100, 16
    tick = n / t
    assert eval_indices(n, t).tolist() == [int(tick / 2 + tick * k) for k in range(t)]
    assert eval_indices(n, t).tolist() == eval_indices(n, t).tolist()
    short = eval_indices(5, 16)
    assert short.shape == (16,) and (np.diff(short) >= 0).all() and short.max() == 4


def test_clips_differ_and_stay_inside():
    clips = [eval_indices(90, 8, 1, c, 3) for c in range(3)]
    assert all(not np.array_equal(a, b) for a, b in [(clips[0], clips[1]), (clips[1], clips[2])])
    assert all(c.min() >= 0 and c.max() < 90 for c in clips)
    with pytest.raises(ValueError, match="clip must lie"):
        eval_indices(90, 8, 1, 3, 3)
    with pytest.raises(ValueError, match="at least one frame"):
        eval_indices(0, 8)


def test_thirteen_fixed_offsets():
    offs = fixed_offsets(340, 256, 224, 224)
    assert len(offs) == 13 and len(set(offs)) == 13
    assert offs[0] == (0, 0) and offs[3] == (4 * 29, 4 * 8) and offs[4] == (2 * 29, 2 * 8)


def test_multiscale_crop_boxes_use_tsn_sizes():
    rng = np.random.default_rng(0)
    allowed = {256, 224, 192, 168}  # 256 x (1, .875, .75, .66), floored
    for _ in range(200):
        x, y, w, h = multiscale_crop_box(256, 340, 224, rng)
        assert w in allowed and h in allowed
        assert 0 <= x <= 340 - w and 0 <= y <= 256 - h
        sides = sorted(allowed, reverse=True)
        assert abs(sides.index(w) - sides.index(h)) <= 1  # at most one step of aspect distortion


def test_sizes_within_three_pixels_snap_to_the_output():
    rng = np.random.default_rng(0)
    boxes = {multiscale_crop_box(100, 100, 98, rng)[2] for _ in range(100)}
    assert 98 in boxes and 100 not in boxes


def test_train_transform_is_consistent_across_frames():
    frame = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    clip = frame.expand(6, 3, 48, 64).contiguous()
    for seed in range(10):
        out = TrainTransform(32)(clip, np.random.default_rng(seed))
        assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(6))


def test_transforms_end_in_one_copy_equal_to_resize_flip_contiguous():
    from videoiq.data.transforms import contiguous_clip, resize

    frames = torch.randint(0, 256, (5, 40, 50, 3), dtype=torch.uint8)
    for clip in (frames.permute(0, 3, 1, 2), frames.permute(0, 3, 1, 2).contiguous()):  # channels-last and not
        for seed in range(12):
            rng = np.random.default_rng(seed)
            x, y, w, h = multiscale_crop_box(40, 50, 32, rng)
            expected = resize(clip[..., y:y + h, x:x + w], 32, 32)
            expected = (expected.flip(-1) if rng.random() < 0.5 else expected).contiguous()
            slot = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
            assert TrainTransform(32)(clip, np.random.default_rng(seed), out=slot) is slot
            assert torch.equal(slot, expected)
            assert torch.equal(TrainTransform(32)(clip, np.random.default_rng(seed)), expected)
        resized = resize(clip, 36, 45)
        corners = [resized[..., y:y + 32, x:x + 32] for x, y in ((0, 0), (13, 0), (0, 4), (13, 4), (6, 2))]
        assert torch.equal(EvalTransform(32, 36, 1)(clip), corners[4][None].contiguous())
        assert torch.equal(EvalTransform(32, 36, 10)(clip), torch.stack(corners + [v.flip(-1) for v in corners]))
        flipped = contiguous_clip(clip, flip=True)
        assert flipped.is_contiguous() and torch.equal(flipped, clip.flip(-1))


def test_eval_transform_views():
    clip = torch.arange(4 * 3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).view(4, 3, 40, 60)
    for crops in (1, 3, 5, 10):
        out = EvalTransform(32, 36, crops)(clip)
        assert out.shape == (crops, 4, 3, 32, 32)
    ten = EvalTransform(32, 36, 10)(clip)
    assert torch.equal(ten[5], ten[0].flip(-1))
    with pytest.raises(ValueError, match="num_crops"):
        EvalTransform(32, 36, 4)


def test_normalize_matches_imagenet_statistics():
    video = torch.full((2, 3, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(video)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(out[0, 0, :, 0, 0], torch.tensor(expected))


def test_resize_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    from videoiq.data.transforms import resize_short_side

    clip = torch.randint(0, 256, (3, 3, 50, 70), dtype=torch.uint8)
    assert torch.equal(resize_short_side(clip, 32), TF.resize(clip, 32, antialias=True))
    tall = clip.transpose(-1, -2).contiguous()
    assert torch.equal(resize_short_side(tall, 32), TF.resize(tall, 32, antialias=True))
