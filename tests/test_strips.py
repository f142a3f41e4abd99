"""Decision strips: a row of frames per video with the action under each, in the action's own colour."""
import numpy as np
import pytest

from videoiq.strips import CELL, GAP, LABEL_H, TITLE_H, action_colour, decision_strip


def test_action_colours_grey_skips_and_deepen_with_bits():
    assert action_colour("skip1") == action_colour("skip2")
    shades = [sum(action_colour(a)) for a in ("2bit", "4bit", "32bit")]
    assert shades == sorted(shades, reverse=True)  # more bits, darker
    assert action_colour("fp") == action_colour("32bit")


def test_strip_lays_out_frames_and_labels():
    frames = [np.full((3, 20, 20, 3), 200, np.uint8), np.zeros((2, 20, 20, 3), np.uint8)]
    image = decision_strip(frames, [["32bit", "skip1", "2bit"], ["4bit", "skip1"]], ["a", "b"])
    assert image.size == (3 * (CELL + GAP) + GAP, 2 * (TITLE_H + CELL + LABEL_H + GAP) + GAP)
    top = GAP + TITLE_H
    assert image.getpixel((GAP + 5, top + 5)) == (200, 200, 200)  # a frame that ran is shown as it is
    skipped = image.getpixel((GAP + CELL + GAP + 5, top + 5))
    assert skipped[0] > 200  # a skipped frame is faded
    assert image.getpixel((GAP + CELL - 3, top + CELL + LABEL_H - 3)) == action_colour("32bit")


def test_strip_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one action per frame"):
        decision_strip([np.zeros((3, 8, 8, 3), np.uint8)], [["2bit"]], ["x"])
    with pytest.raises(ValueError, match="as many videos"):
        decision_strip([], [], [])
