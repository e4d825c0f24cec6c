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


def settings(mode, guidance):
    return MethodSettings.for_mode(mode, guidance=guidance)


def two_layers(energy_fn, *args):
    """(edit, content) summed over two identical feature layers, as a guide sums them."""
    per_layer = [energy_fn(*args, 2) for _ in range(2)]
    return sum(e for e, _ in per_layer).item(), sum(c for _, c in per_layer).item()


def move_case():
    """Four cells: 0 vacated (object, not target), 1 target, 2 and 3 outside both (share)."""
    gen = feat([1, 0], [1, 1], [1, 0], [0, 1])
    guide = feat([1, 0], [0, 1], [1, 0], [1, 0])
    placed = feat([0, 0], [1, 0], [0, 0], [0, 0])
    r = E.MoveRegions(
        target=torch.tensor([[0.0, 1, 0, 0]]), share=torch.tensor([[0.0, 0, 1, 1]]),
        vacated=torch.tensor([[1.0, 0, 0, 0]]), background=torch.tensor([[0.0, 1, 1, 1]]), has_vacated=True)
    return gen, guide, placed, r


def test_move_energy_by_hand_release():
    """The release: raw cosine for edit and content, layer weights 0.5 except inpaint (summed), inpaint
    against the mean of the share region."""
    gen, guide, placed, r = move_case()
    edit, content = two_layers(E.move_energy, gen, guide, placed, r, settings(Mode.MOVE, "release"))
    cos_edit = 1 / math.sqrt(2)  # (1,1) vs (1,0), not mapped to [0, 1]
    cos_share = (1 + 0) / 2  # (1,0)vs(1,0) and (0,1)vs(1,0)
    s_contrast = 1.0  # (1,0) vs (1,0), mapped
    s_inpaint = 1.0  # mean gen on the vacated cell (1,0) vs mean guide on the share region (1,0)
    assert edit == pytest.approx(2 * 0.5 * 4 / (1 + 4 * cos_edit))
    inpaint = 0.8 / (1 + 4 * s_inpaint)
    assert content == pytest.approx(2 * 0.5 * (6 / (1 + 4 * cos_share) + 0.2 * s_contrast) + 2 * inpaint)


def test_move_energy_by_hand_paper():
    """The paper: every similarity mapped to [0, 1] (eq. 4), every term averaged over layers, inpaint
    against the mean of everything outside the object."""
    gen, guide, placed, r = move_case()
    edit, content = two_layers(E.move_energy, gen, guide, placed, r, settings(Mode.MOVE, "paper"))
    s_edit = (1 / math.sqrt(2) + 1) / 2
    s_share = (0.5 + 1) / 2
    mean_bg = torch.tensor([2 / 3, 1 / 3])  # guide over cells 1, 2, 3
    s_inpaint = (torch.nn.functional.cosine_similarity(torch.tensor([1.0, 0]), mean_bg, dim=0).item() + 1) / 2
    assert s_inpaint == pytest.approx((2 / math.sqrt(5) + 1) / 2)
    assert edit == pytest.approx(4 / (1 + 4 * s_edit))
    assert content == pytest.approx(6 / (1 + 4 * s_share) + 0.2 * 1.0 + 0.8 / (1 + 4 * s_inpaint))


@pytest.mark.parametrize("guidance", ["release", "paper"])
def test_move_energy_without_vacated_area_has_no_contrast_or_inpaint(guidance):
    gen, guide = feat([1, 0], [0, 1]), feat([0, 1], [0, 1])
    zero = torch.zeros(1, 2)
    r = E.MoveRegions(torch.tensor([[1.0, 0]]), torch.tensor([[0.0, 1]]), zero, zero, has_vacated=False)
    edit, content = two_layers(E.move_energy, gen, guide, guide, r, settings(Mode.MOVE, guidance))
    s_edit = 0.0 if guidance == "release" else 0.5  # orthogonal: raw cosine 0, mapped 0.5
    assert edit == pytest.approx(4 / (1 + 4 * s_edit))
    assert content == pytest.approx(6 / 5)


@pytest.mark.parametrize("guidance, layer_factor", [("release", 2), ("paper", 1)])
def test_appearance_energy_by_hand(guidance, layer_factor):
    """Release: each layer's terms summed (twice the paper's layer mean for two equal layers)."""
    gen = feat([1, 0], [0, 1])
    guide = feat([1, 0], [0, 1])
    ref = feat([-1, 0], [3, 3])
    r = E.AppearanceRegions(obj=torch.tensor([[1.0, 0]]), ref_obj=torch.tensor([[0.0, 1]]),
                            share=torch.tensor([[0.0, 1]]))
    edit, content = two_layers(E.appearance_energy, gen, guide, ref, r, settings(Mode.APPEARANCE, guidance))
    s_app = (1 / math.sqrt(2) + 1) / 2  # mean (1,0) vs mean (3,3), mapped
    assert edit == pytest.approx(layer_factor * 3.5 / (1 + 4 * s_app))
    assert content == pytest.approx(layer_factor * 5 / 5)


@pytest.mark.parametrize("guidance, layer_factor", [("release", 2), ("paper", 1)])
def test_paste_energy_by_hand(guidance, layer_factor):
    gen = feat([1, 0], [1, 1], [0, 1])
    guide = feat([0, 0], [0, 1], [0, 1])
    placed = feat([0, 1], [0, 0], [0, 0])
    r = E.MoveRegions(torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 1, 1]]), torch.zeros(1, 3),
                      torch.zeros(1, 3), False)
    edit, content = two_layers(E.paste_energy, gen, guide, placed, r, settings(Mode.PASTE, guidance))
    s_share = ((1 / math.sqrt(2) + 1) / 2 + 1) / 2  # (1,1)vs(0,1) and (0,1)vs(0,1), mapped, averaged
    assert edit == pytest.approx(layer_factor * 4 / (1 + 4 * 0.5))  # (1,0) vs (0,1): mapped 0.5
    assert content == pytest.approx(layer_factor * 6 / (1 + 4 * s_share))


@pytest.mark.parametrize("guidance", ["release", "paper"])
def test_drag_energy_by_hand(guidance):
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
    edit, content = two_layers(E.drag_energy, gen, guide, r, settings(Mode.DRAG, guidance))
    # target patch (0,1) matches handle content (0,1): S = 1; the handle cell (1,0) vs (0,1): S = 0.5;
    # averaged over points and layers in both guidances
    assert edit == pytest.approx(4 / 5 + 0.2 * 0.5)
    assert content == pytest.approx(6 / 5)


def test_energy_gradients_flow_only_to_generated_features():
    s = MethodSettings.for_mode(Mode.PASTE)
    gen = torch.randn(1, 3, 2, 2, requires_grad=True)
    ref = torch.randn(1, 3, 2, 2, requires_grad=True)
    r = E.MoveRegions(torch.ones(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), False)
    edit, _ = E.paste_energy(gen, ref.detach(), ref.detach(), r, s, 2)
    edit.backward()
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    assert ref.grad is None
