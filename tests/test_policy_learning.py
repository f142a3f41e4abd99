"""The policy learns per-frame choices: trained on videos where one frame shows the class and the others carry
no signal, it skips the blank frames and keeps the one that answers. The test fails when the classification
loss stops reaching the policy, when the policy's frame features are zeroed, or when its decisions ignore the
frame.

The policy chooses between 32 bits and skipping, the choice the data settles: a skipped blank frame saves a
whole frame's cost and loses nothing, a skipped signal frame loses the class. (The lower widths read these
frames as well as 32 bits do, and what 2 bits cost over a skip, 6% of a frame, pulls too weakly to decide
within a test's few hundred steps.) The backbone is trained on videos with blank frames too: one that never
saw them reads them with large logits of a class that changes with the seed and the machine's float
rounding, and what the policy learns would change with it."""
import pytest
import torch

from videoiq.config import LossSection
from videoiq.models import VideoIQ, create_model
from videoiq.train.loop import train_step
from videoiq.train.tasks import AnyPrecisionTask, PolicyTask

pytestmark = pytest.mark.slow  # trains a policy for a few hundred steps per test

FRAMES, SIZE = 4, 32
COLOURS = torch.tensor([[1.8, -1.0, -1.0], [-1.0, -1.0, 1.8]])  # normalised red and blue discs


def _videos(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` videos, a disc of the class colour on grey in one frame; the others ("blank") are plain grey.
    Returns (videos, labels, blank mask (n, FRAMES))."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    blank = torch.zeros(n, FRAMES, dtype=torch.bool)
    for i in range(n):
        blank[i, torch.randperm(FRAMES, generator=g)[1:]] = True
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    video = 0.1 * torch.randn(n, FRAMES, 3, SIZE, SIZE, generator=g)
    for i in range(n):
        for t in range(FRAMES):
            if not blank[i, t]:
                cx, cy = torch.randint(10, SIZE - 10, (2,), generator=g).tolist()
                disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 64
                video[i, t][:, disc] += COLOURS[labels[i]][:, None]
    return video, labels, blank


def _backbone() -> torch.nn.Module:
    """An any-precision tiny ResNet that tells the colours apart at every width, trained on the same kind of
    videos (blank frames included) at a learning rate that keeps its logits moderate."""
    ap = create_model("ap_resnet_tiny", num_classes=2, dropout=0.0)
    task = AnyPrecisionTask(ap, (32, 4, 2), teacher=None, kind="ce")
    opt = torch.optim.SGD(ap.parameters(), lr=0.01, momentum=0.9)
    video, labels, _ = _videos(64, seed=1)
    for step in range(80):
        j = torch.arange(16) + 16 * (step % 4)
        train_step(task, task.module, video[j], labels[j], opt)
    return ap.eval()


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return _backbone()


def _train_policy(backbone, *, steps=240, lr=0.1, break_gradient=False, zero_features=False, ignore_frames=False):
    """Train a tiny policy (32 bits or skip; CE + efficiency) on the frozen backbone; return its skip
    probability on blank and on signal frames of held-out videos."""
    torch.manual_seed(0)
    policy = create_model("policy_mobilenet_v2_tiny", num_precisions=1, skip_choices=[1], hidden_size=32,
                          input_size=16, dropout=0.0)
    model = VideoIQ(backbone, policy, precisions=(32,))
    if zero_features:
        policy.frame_features = lambda video: torch.zeros(*video.shape[:2], policy.rnn.input_size)
    if ignore_frames:  # every step reads the first frame only
        features = policy.frame_features
        policy.frame_features = lambda video: features(video)[:, :1].expand(-1, video.shape[1], -1)
    task = PolicyTask(model, LossSection(kind="ce", efficiency_weight=1.0), temperature_init=5.0, temperature_decay=0.9)
    if break_gradient:
        forward = model.forward
        model.forward = lambda video, **kw: forward(video, **kw)._replace(
            logits=forward(video, forced_actions=torch.zeros(video.shape[:2], dtype=torch.long)).logits)
    heads = [p for n, p in policy.named_parameters() if not n.startswith("features")]
    opt = torch.optim.SGD([{"params": heads, "lr": lr}, {"params": policy.features.parameters(), "lr": 0.01}],
                          momentum=0.9)
    video, labels, _ = _videos(64, seed=2)
    for step in range(steps):
        task.on_epoch_start(step // 20)
        j = torch.randperm(64)[:16]
        task.train(True)
        train_step(task, task.module, video[j], labels[j], opt)
    video, labels, blank = _videos(64, seed=3)
    model.eval()
    with torch.no_grad():
        p_skip = policy(video).log_probs.exp()[..., -1]
    return float(p_skip[blank].mean()), float(p_skip[~blank].mean())


def test_policy_skips_frames_without_signal_and_keeps_the_others(backbone):
    on_blank, on_signal = _train_policy(backbone)
    assert on_blank > 0.9 and on_signal < 0.1, (on_blank, on_signal)


@pytest.mark.parametrize("broken", ["break_gradient", "zero_features", "ignore_frames"])
def test_the_margin_needs_gradients_features_and_frames(backbone, broken):
    on_blank, on_signal = _train_policy(backbone, **{broken: True})
    assert on_blank - on_signal < 0.3, (broken, on_blank, on_signal)
