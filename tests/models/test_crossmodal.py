"""The cross-modal encoder: shapes, norms, masks, augmentation, determinism, learning, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import crossmodal
from models.config import CrossModalConfig
from models.losses import symmetric_info_nce

TINY = CrossModalConfig(dim=8, width=4, image_size=16, epochs=2, batch_size=8, seed=0)


def solid_pixels(colours: list[tuple[int, int, int]], size: int = 16) -> torch.Tensor:
    """[N, S, S, 3] uint8 images, each one solid colour."""
    c = torch.tensor(colours, dtype=torch.uint8)  # (N, 3)
    return c[:, None, None, :].expand(len(colours), size, size, 3).contiguous()


@pytest.mark.parametrize("b", [1, 7])
def test_towers_shapes_and_norms(b: int) -> None:
    enc = crossmodal.build_encoder(5, TINY).eval()
    z_img = enc.image(torch.randn(b, 3, 16, 16))
    z_text = enc.text(torch.randn(b, 5))
    assert z_img.shape == (b, 8) and z_text.shape == (b, 8)
    torch.testing.assert_close(z_img.norm(dim=-1), torch.ones(b))
    torch.testing.assert_close(z_text.norm(dim=-1), torch.ones(b))


def test_grid_pooling_widens_the_head() -> None:
    # width 4 -> 32 channels at the end; a 2x2 grid gives 4 cells of 32 = 128 inputs to the head
    assert crossmodal.ImageTower(8, width=4, grid=2).head.in_features == 128
    assert crossmodal.ImageTower(8, width=4, grid=1).head.in_features == 32


def test_pixels_to_input_range_and_errors() -> None:
    x = crossmodal.pixels_to_input(solid_pixels([(0, 255, 0)], 8))
    assert x.shape == (1, 3, 8, 8)
    # 0 -> -1, 255 -> +1
    assert float(x[0, 0].max()) == -1.0 and float(x[0, 1].min()) == 1.0
    with pytest.raises(ValueError, match="uint8"):
        crossmodal.pixels_to_input(torch.zeros(1, 8, 8, 3))


def test_pair_mask_hand_values_and_dropout() -> None:
    has_img = torch.tensor([True, True, False, True])
    has_txt = torch.tensor([True, False, True, True])
    assert crossmodal.pair_mask(has_img, has_txt, 0.0, None).tolist() == [True, False, False, True]
    ones = torch.ones(10_000, dtype=torch.bool)
    kept = crossmodal.pair_mask(ones, ones, 0.3, torch.Generator().manual_seed(0))
    assert abs(float(kept.float().mean()) - 0.7) < 0.02  # ~30% of the pairs hidden
    again = crossmodal.pair_mask(ones, ones, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)
    with pytest.raises(ValueError, match="generator"):
        crossmodal.pair_mask(ones, ones, 0.3, None)


def test_masked_rows_do_not_change_the_loss() -> None:
    # rows 1 and 3 miss a side: the loss equals the loss of rows 0 and 2 alone, whatever rows 1 and 3 hold
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    mask = crossmodal.pair_mask(
        torch.tensor([True, False, True, True]), torch.tensor([True, True, True, False]), 0.0, None
    )
    full = symmetric_info_nce(a, b, 0.1, mask=mask)
    b2 = b.clone()
    b2[[1, 3]] = -b2[[1, 3]]
    torch.testing.assert_close(symmetric_info_nce(a, b2, 0.1, mask=mask), full)
    torch.testing.assert_close(symmetric_info_nce(a[[0, 2]], b[[0, 2]], 0.1), full)


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = crossmodal.pixels_to_input(solid_pixels([(200, 10, 10), (10, 10, 200)]))
    out1 = crossmodal.augment(x, torch.Generator().manual_seed(1))
    out2 = crossmodal.augment(x, torch.Generator().manual_seed(1))
    assert out1.shape == x.shape and torch.equal(out1, out2)
    assert float(out1.min()) >= -1.0 and float(out1.max()) <= 1.0
    # a solid image stays solid under flip/zoom/shift with border padding: only the brightness moves
    assert float(out1[0, 0].std()) < 1e-5


def _planted(n_per: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 colours x n_per items: solid images of the colour, titles = one-hot colour + noise, colour labels."""
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (230, 230, 40)]
    labels = torch.arange(4).repeat_interleave(n_per)  # (N,)
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.one_hot(labels, 4).float() + 0.05 * torch.randn(len(labels), 4, generator=gen)
    return solid_pixels([colours[i] for i in labels.tolist()]), text, labels


def test_training_aligns_planted_colours() -> None:
    pixels, text, labels = _planted()
    cfg = TINY.model_copy(update={"epochs": 40, "lr": 1e-2, "augment": False})
    model = crossmodal.build_encoder(4, cfg)
    result = crossmodal.train_encoder(model, pixels, text)
    assert result.losses[-1] < result.losses[0]
    z_img = crossmodal.embed_images(model, pixels)  # (N, D)
    z_text = crossmodal.embed_texts(model, text)  # (N, D)
    best = (z_text @ z_img.T).argmax(dim=1)  # (N,) image each title ranks first
    assert (labels[best] == labels).float().mean() == 1.0  # every title finds an image of its colour


def test_training_is_deterministic_and_seeded() -> None:
    pixels, text, _ = _planted(3)

    def run(seed: int) -> str:
        model = crossmodal.build_encoder(4, TINY.model_copy(update={"seed": seed, "modality_dropout": 0.2}))
        crossmodal.train_encoder(model, pixels, text)
        return crossmodal.model_id(model)

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_items_missing_a_side_are_left_out() -> None:
    # rows without a title: their (garbage) text rows get no gradient, the projection is trained on the others
    pixels, text, _ = _planted(3)
    has_text = torch.tensor([True] * 6 + [False] * 6)
    model = crossmodal.build_encoder(4, TINY.model_copy(update={"augment": False}))
    garbage = text.clone()
    garbage[6:] = 1e6
    result = crossmodal.train_encoder(model, pixels, garbage, has_text=has_text)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    # with every pair masked there is nothing to contrast: no step at all, the weights stay as built
    model2 = crossmodal.build_encoder(4, TINY)
    res2 = crossmodal.train_encoder(model2, pixels, text, has_image=torch.zeros(12, dtype=torch.bool))
    assert res2.steps == 0 and res2.losses == [0.0, 0.0]
    assert crossmodal.model_id(model2) == crossmodal.model_id(crossmodal.build_encoder(4, TINY))


def test_image_term_trains_photos_without_titles_and_is_optional() -> None:
    # two items have both sides (the title term runs), the other ten have photos only: the image-image term
    # still trains the tower on them, so the weights differ from a titles-only run of the same seed
    pixels, text, _ = _planted(3)
    has_text = torch.tensor([True, True] + [False] * 10)

    def run(weight: float) -> crossmodal.CrossModalEncoder:
        model = crossmodal.build_encoder(4, TINY.model_copy(update={"image_loss_weight": weight}))
        result = crossmodal.train_encoder(model, pixels, text, has_text=has_text)
        assert result.steps > 0 and all(torch.isfinite(torch.tensor(result.losses)))
        return model

    assert crossmodal.model_id(run(0.5)) == crossmodal.model_id(run(0.5))  # seeded, second view included
    assert crossmodal.model_id(run(0.5)) != crossmodal.model_id(run(0.0))
    # the term alone: identical views of a batch give the lowest loss for a given temperature
    model = crossmodal.build_encoder(4, TINY)
    z = crossmodal.embed_images(model, pixels)
    tau = torch.tensor(TINY.image_temperature)
    assert symmetric_info_nce(z, z, tau) < symmetric_info_nce(z, z.roll(1, 0), tau)


def test_train_checks_shapes() -> None:
    model = crossmodal.build_encoder(4, TINY)
    with pytest.raises(ValueError, match="text_emb"):
        crossmodal.train_encoder(model, solid_pixels([(0, 0, 0)] * 2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="image_size"):
        crossmodal.train_encoder(model, solid_pixels([(0, 0, 0)] * 2, 8), torch.zeros(2, 4))


def test_checkpoint_round_trip_and_warm_start(tmp_path: Path) -> None:
    pixels, text, _ = _planted(2)
    model = crossmodal.build_encoder(4, TINY)
    crossmodal.train_encoder(model, pixels, text)
    crossmodal.save(model, tmp_path / "enc.pt", {"text_model": "tiny"})
    loaded, meta = crossmodal.load(tmp_path / "enc.pt")
    assert meta["text_model"] == "tiny" and crossmodal.model_id(loaded) == crossmodal.model_id(model)
    torch.testing.assert_close(
        crossmodal.embed_images(loaded, pixels), crossmodal.embed_images(model, pixels)
    )
    fresh = crossmodal.build_encoder(4, TINY)
    assert crossmodal.warm_start_from(fresh, loaded)
    assert crossmodal.model_id(fresh) == crossmodal.model_id(model)
    other = crossmodal.build_encoder(4, TINY.model_copy(update={"dim": 6}))
    assert not crossmodal.warm_start_from(other, loaded)


def test_config_rejects_sizes_not_multiple_of_8() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        CrossModalConfig(image_size=20)
