"""Energy terms against values worked out by hand on tiny tensors."""

import math

import pytest
import torch

from dragon_server.engine import energy as E
from dragon_server.engine.request import Mode
from dragon_server.engine.settings import MethodSettings


def feat(*vectors):
    """A (1, C, 1, N) map from N C-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T[None, :, None, :]


def test_similarity_maps_cosine_to_unit_interval():
    gen = feat([1, 0], [0, 1], [1, 1])
    ref = feat([1, 0], [0, -1], [1, 0])
    # cosines 1, -1, 1/sqrt(2)
    assert E.similarity(gen, ref, torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(1.0)
    assert E.similarity(gen, ref, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(0.0)
    both = E.similarity(gen, ref, torch.tensor([[1.0, 1.0, 0.0]])).item()
    assert both == pytest.approx(0.5)
    weighted = E.similarity(gen, ref, torch.tensor([[0.0, 0.0, 2.0]])).item()
    assert weighted == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_mean_similarity_compares_mean_features():
    gen = feat([1, 0], [0, 1])
    ref = feat([2, 2], [5, -5])
    # mean of gen over both = (0.5, 0.5); ref over the first only = (2, 2): same direction
    s = E.mean_similarity(gen, torch.tensor([[1.0, 1.0]]), ref, torch.tensor([[1.0, 0.0]]))
    assert s.item() == pytest.approx(1.0)
    s = E.mean_similarity(gen, torch.tensor([[1.0, 0.0]]), ref, torch.tensor([[0.0, 1.0]]))
    assert s.item() == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_attraction_is_w_over_alpha_plus_beta_s():
    s = MethodSettings()
    assert E.attraction(torch.tensor(0.5), 4.0, s).item() == pytest.approx(4.0 / (1 + 4 * 0.5))


def test_move_energy_by_hand():
    s = MethodSettings.for_mode(Mode.MOVE)
    gen = feat([1, 0], [0, 1], [1, 1], [0, 1])
    guide = feat([1, 0], [1, 0], [0, 1], [0, 1])
    placed = feat([0, 0], [0, 1], [0, 0], [0, 0])
    r = E.MoveRegions(
        target=torch.tensor([[0.0, 1, 0, 0]]), share=torch.tensor([[0.0, 0, 0, 1]]),
        vacated=torch.tensor([[1.0, 0, 0, 0]]), background=torch.tensor([[0.0, 0, 1, 1]]), has_vacated=True)
    edit, content = E.move_energy(gen, guide, placed, r, s)
    s_edit = 1.0  # gen (0,1) vs placed (0,1)
    s_contrast = 1.0  # gen (1,0) vs guide (1,0) on the vacated cell
    # inpaint: mean gen on the vacated cell (1,0) vs mean guide on the background (0,1)
    mean_gen, mean_bg = torch.tensor([1.0, 0]), torch.tensor([0.0, 1.0])
    s_inpaint = (torch.nn.functional.cosine_similarity(mean_gen, mean_bg, dim=0).item() + 1) / 2
    # as in the release, the vacated-area terms belong to the content energy (they act outside the target)
    assert edit.item() == pytest.approx(4 / (1 + 4 * s_edit))
    expected_content = 6 / (1 + 4 * 1.0) + 0.2 * s_contrast + 0.8 / (1 + 4 * s_inpaint)
    assert content.item() == pytest.approx(expected_content)


def test_move_energy_without_vacated_area_has_no_contrast_or_inpaint():
    s = MethodSettings.for_mode(Mode.MOVE)
    gen, guide = feat([1, 0], [0, 1]), feat([0, 1], [0, 1])
    zero = torch.zeros(1, 2)
    r = E.MoveRegions(torch.tensor([[1.0, 0]]), torch.tensor([[0.0, 1]]), zero, zero, has_vacated=False)
    edit, content = E.move_energy(gen, guide, guide, r, s)
    assert edit.item() == pytest.approx(4 / (1 + 4 * 0.5))
    assert content.item() == pytest.approx(6 / 5)


def test_appearance_energy_by_hand():
    s = MethodSettings.for_mode(Mode.APPEARANCE)
    gen = feat([1, 0], [0, 1])
    guide = feat([1, 0], [0, 1])
    ref = feat([-1, 0], [3, 3])
    r = E.AppearanceRegions(obj=torch.tensor([[1.0, 0]]), ref_obj=torch.tensor([[0.0, 1]]),
                            share=torch.tensor([[0.0, 1]]))
    edit, content = E.appearance_energy(gen, guide, ref, r, s)
    s_app = (1 / math.sqrt(2) + 1) / 2
    assert edit.item() == pytest.approx(3.5 / (1 + 4 * s_app))
    assert content.item() == pytest.approx(5 / 5)


def test_drag_energy_by_hand():
    s = MethodSettings.for_mode(Mode.DRAG)
    gen = torch.zeros(1, 2, 1, 4)
    gen[0, :, 0, 3] = torch.tensor([0.0, 1.0])  # target cell
    gen[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # handle cell, not yet moved away
    gen[0, :, 0, 1:3] = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).T
    guide = torch.zeros(1, 2, 1, 4)
    guide[0, :, 0, 0] = torch.tensor([0.0, 1.0])  # the content at the handle
    guide[0, :, 0, 1:] = 1.0
    left = torch.tensor([[1.0, 0, 0, 0]])
    r = E.DragRegions(targets=[(slice(0, 1), slice(3, 4))], handles=[(slice(0, 1), slice(0, 1))], left=[left],
                      share=torch.tensor([[0.0, 1, 1, 0]]))
    edit, content = E.drag_energy(gen, guide, r, s)
    # target patch (0,1) matches handle content (0,1): S = 1; the handle cell (1,0) vs (0,1): S = 0.5
    assert edit.item() == pytest.approx(4 / 5 + 0.2 * 0.5)
    assert content.item() == pytest.approx(6 / 5)


def test_energy_gradients_flow_only_to_generated_features():
    s = MethodSettings.for_mode(Mode.PASTE)
    gen = torch.randn(1, 3, 2, 2, requires_grad=True)
    ref = torch.randn(1, 3, 2, 2, requires_grad=True)
    r = E.MoveRegions(torch.ones(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), False)
    edit, _ = E.paste_energy(gen, ref.detach(), ref.detach(), r, s)
    edit.backward()
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    assert ref.grad is None
