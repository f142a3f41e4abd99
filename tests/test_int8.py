"""The integer engine: the same numbers as fake quantization, on int8 kernels, where users run inference."""
import copy as copy_module
import math
import warnings

import pytest
import torch

import videoiq.models.int8 as int8
from videoiq.bench.exactness import calibrated_model
from videoiq.models import EngineUnavailable, Int8ResNet, VideoIQ, create_model
from videoiq.quant import PACT, activation_scale, bit_width, quantize_weight, weight_levels


def _calibrated(name: str, bit_widths=(32, 4, 2)) -> torch.nn.Module:
    return calibrated_model(name, 32, classes=7, bit_widths=bit_widths)


@pytest.mark.parametrize("bits", [2, 4, 7, 32])
@pytest.mark.parametrize("mean_aligned", [False, True])
def test_weight_levels_are_the_integer_form_of_the_quantized_weight(bits, mean_aligned):
    weight = torch.randn(16, 8, 3, 3)
    levels, gain = weight_levels(weight, bits, 32, mean_aligned)
    assert levels.dtype == torch.int64 and 0 <= levels.min() and levels.max() <= 2**bits
    expected = quantize_weight(weight, bits, 32, mean_aligned)
    assert torch.allclose(gain * levels.double() - 1, expected.double(), atol=1e-6)
    if bits < 32:  # the levels are the width's grid: at most 2**bits + 1 of them
        assert len(levels.unique()) <= 2**bits + 1


class _Recorder:
    """Wraps the eager epilogues: each activation layer's values before rounding and its codes, in order."""

    def __init__(self, monkeypatch):
        self.layers = []
        eager = int8._EAGER
        stem, codes, residual = eager.stem_codes, eager.codes, eager.codes_residual

        def rec_stem(x, mult, qmax, pool):
            out = stem(x, mult, qmax, pool)
            self.layers.append((torch.nn.functional.max_pool2d(torch.relu(x), *pool) * mult, out[0]))
            return out

        def rec_codes(t, coef, box, qmax):
            out = codes(t, coef, box, qmax)
            self.layers.append((t + coef * box, out[0]))
            return out

        def rec_residual(t, coef, box, identity, id_scale, qmax):
            out = residual(t, coef, box, identity, id_scale, qmax)
            self.layers.append((t + coef * box + identity * id_scale, out[0]))
            return out

        monkeypatch.setattr(int8, "_EAGER", int8._Epilogues(rec_stem, rec_codes, rec_residual, eager.floats,
                                                            eager.floats_residual))


def _fake_codes(model, frames, bits):
    """The codes of every PACT of the fake-quantized model (module order = the engine's layer order)."""
    codes = []
    hooks = [m.register_forward_hook(lambda m, i, o: codes.append(torch.round(o * activation_scale(m.clip_for(bits),
                                                                                                   bits))))
             for m in model.modules() if isinstance(m, PACT)]
    with torch.no_grad(), bit_width(model, bits):
        logits = model.fc(model.frame_features(frames))
    for h in hooks:
        h.remove()
    return codes, logits


@pytest.mark.parametrize("name, bit_widths", [("ap_resnet_tiny", (32, 4, 2)), ("ap_resnet_demo", (32, 4, 2)),
                                              ("ap_resnet_tiny", (8, 7, 3))])
def test_integer_engine_computes_what_fake_quantization_computes(monkeypatch, name, bit_widths):
    """Every code of every activation layer equals fake quantization's, except where a value falls within float
    rounding of a rounding boundary: then one code differs by one, and that frame's later layers and logits see
    a slightly different input. Frames with no such flip agree to float rounding in every code and logit; flips
    are counted and must stay rare, and a flipped frame's logits still close. A wrong scale, bias, zero point
    or box term fails this."""
    model = _calibrated(name, bit_widths)
    engine = Int8ResNet(model, compiled=False)
    frames = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for bits in bit_widths:
        recorder = _Recorder(monkeypatch)
        got = model.fc(engine.frame_features(frames, bits))
        fake, expected = _fake_codes(model, frames, bits)
        flipped = torch.zeros(len(frames), dtype=torch.bool)  # frames whose input already differed at a boundary
        flips, compared = 0, 0
        if bits <= int8.INT8_MAX_BITS:
            assert len(recorder.layers) == len(fake)
            for (values, codes), want in zip(recorder.layers, fake, strict=True):
                clean = ~flipped
                differ = codes[clean].float() != want[clean]
                compared += differ.numel()
                if differ.any():
                    frac = values[clean][differ] - values[clean][differ].floor()
                    assert (frac - 0.5).abs().max() < 1e-3, f"{bits} bits: codes differ away from a rounding boundary"
                    assert (codes[clean].float() - want[clean]).abs().max() == 1
                    flips += int(differ.sum())
                    flipped[clean.nonzero().squeeze(1)[differ.flatten(1).any(1)]] = True
            assert flips <= max(2, 1e-4 * compared), f"{bits} bits: {flips} flips in {compared} codes"
        else:
            assert recorder.layers == []  # 8 bits and more: float kernels
        scale = expected.abs().max()
        error = (got - expected).abs().amax(1)
        assert (error[~flipped] <= 1e-4 * scale).all(), f"{bits} bits"
        assert (error[flipped] <= 0.05 * scale).all(), f"{bits} bits: a flipped frame's logits drifted"
        assert flipped.sum() <= len(frames) // 4, f"{bits} bits: {int(flipped.sum())} frames flipped"


def test_seven_bits_is_the_widest_integer_width():
    model = _calibrated("ap_resnet_tiny", (8, 7, 3))
    engine = Int8ResNet(model, compiled=False)
    kinds = {bits: type(engine._programs[bits][0]).__name__ for bits in (8, 7, 3)}
    assert kinds == {8: "_FloatBlock", 7: "_IntBlock", 3: "_IntBlock"}
    weight = torch.randn(64, 64)
    weight[0, :2] = torch.tensor([10.0, -10.0])  # the largest magnitude, once of each sign: the grid's two ends
    levels, _ = weight_levels(weight, 8, 32)  # 8 bits: 257 levels, one more than int8 has
    assert levels.max() - levels.min() == 256


def test_conditional_inference_on_the_integer_engine(monkeypatch):
    monkeypatch.setattr(int8, "compiler_available", lambda: False)  # eager epilogues: the same numbers, no compile
    policy = create_model("policy_mobilenet_v2_tiny", num_precisions=3, skip_choices=[1], num_classes=7)
    model = VideoIQ(_calibrated("ap_resnet_tiny"), policy).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    forced = torch.tensor([[0, 1, 3, 2], [3, 3, 3, 3]])  # the second video skips every frame
    logits, _ = model.infer(video, forced_actions=forced, engine="int8")
    engine = model.int8_backbone()
    assert model.int8_backbone() is engine  # built once
    frames = video[0]
    kept = torch.stack([engine.frame_features(frames[i:i + 1], bits)[0] for i, bits in ((0, 32), (1, 4), (3, 2))])
    assert torch.allclose(logits[0], model.backbone.fc(kept.mean(0)), atol=1e-5)
    assert torch.allclose(logits[1], model.backbone.fc.bias)
    dense = model.infer(video, forced_actions=forced)[0]
    assert (logits - dense).abs().max() < 1e-2 * dense.abs().max()
    with torch.no_grad():
        model.backbone.fc.bias.add_(1.0)  # a weight change makes a new engine
    assert model.int8_backbone() is not engine
    copy = copy_module.deepcopy(model)  # copies start without the packed weights
    assert "_int8" not in copy.__dict__


def test_the_integer_engine_says_in_one_line_where_it_cannot_run():
    model = _calibrated("ap_resnet_tiny")
    with pytest.raises(EngineUnavailable, match="runs on CPU only"):
        int8.check_engine("int8", "cuda")
    with pytest.raises(ValueError, match="engine: expected one of float, int8, got 'int4'"):
        int8.check_engine("int4")
    with pytest.raises(EngineUnavailable, match="any-precision models"):
        Int8ResNet(create_model("resnet_tiny", num_classes=3))
    with pytest.raises(EngineUnavailable, match="mean-aligned"):
        Int8ResNet(create_model("ap_resnet_tiny", num_classes=3, mean_aligned=True).eval())
    with pytest.raises(EngineUnavailable, match="at least 2 bits"):
        Int8ResNet(create_model("ap_resnet_tiny", num_classes=3, bit_widths=(4, 1)).eval())
    engine = Int8ResNet(model, compiled=False)
    with pytest.raises(ValueError, match="bit width 3 is not in the model's family"):
        engine.frame_features(torch.randn(1, 3, 32, 32), 3)
    model.train()
    with pytest.raises(ValueError, match="call model.eval"):
        engine.frame_features(torch.randn(1, 3, 32, 32), 4)


@pytest.mark.slow
def test_compiled_epilogues_give_the_eager_numbers():
    if not int8.compiler_available():
        pytest.skip("no C++ compiler: the engine runs its epilogues eagerly")
    model = _calibrated("ap_resnet_demo")
    frames = torch.randn(6, 3, 32, 32)
    eager, compiled = Int8ResNet(model, compiled=False), Int8ResNet(model, compiled=True)
    for bits in (4, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            b = compiled.frame_features(frames, bits)
        if not compiled.compiled:
            pytest.skip(f"this machine's compiler could not build the epilogues: {caught[0].message}")
        a = eager.frame_features(frames, bits)
        assert (a - b).abs().max() <= 1e-3 * a.abs().max() + math.ulp(1.0)


def test_a_compiler_that_fails_leaves_the_eager_epilogues_and_a_warning(monkeypatch):
    from torch._inductor.exc import CppCompileError

    def broken(*args):
        raise CppCompileError(["g++"], "fatal error: Python.h: No such file or directory")

    monkeypatch.setattr(int8, "_epilogues", lambda compiled: int8._Epilogues(broken, broken, broken, broken, broken))
    model = _calibrated("ap_resnet_tiny")
    engine = Int8ResNet(model, compiled=True)
    frames = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="compiling its epilogues failed .*running them eagerly"):
        got = engine.frame_features(frames, 4)
    assert not engine.compiled
    assert torch.equal(got, Int8ResNet(model, compiled=False).frame_features(frames, 4))


def test_bench_exactness_prints_each_width_beside_the_float_rounding_floor(capsys):
    from videoiq.bench.exactness import bench_exactness

    table = bench_exactness("ap_resnet_tiny", size=32, frames=6, threads=1)
    assert list(table) == [32, 4, 2]
    for row in table.values():
        assert row["median_rel"] < 1e-3 and row["floor_median_rel"] < 1e-3
    assert "floor: fake quantization against itself" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_exactness_scores_a_checkpoint_on_its_videos(trained_stages, tiny_videos):
    from videoiq.bench.exactness import bench_exactness

    runs, metrics = trained_stages
    table = bench_exactness(checkpoint=str(runs / "ap"), data_root=str(tiny_videos), threads=1)
    assert table[32]["top1_fake"] == pytest.approx(metrics["ap"]["val/b32/top1"])  # the eval stage's clips
    for row in table.values():
        assert abs(row["top1_int8"] - row["top1_fake"]) <= 100 / 8  # a video at most
    with pytest.raises(ValueError, match="--checkpoint needs --data"):
        bench_exactness(checkpoint=str(runs / "ap"))
