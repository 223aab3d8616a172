import numpy as np
import torch

import vqcodec
from vqcodec import inference
from vqcodec.inference import Policy
from vqcodec.metrics import psnr

from conftest import photo_crop


def test_tiles_have_no_visible_seams(photo):
    """Tiled encode + decode (tiles of 128 pixels, i.e. 16 latent positions) stays within 0.1 dB
    of doing the whole image at once, and differs from it only slightly near tile borders."""
    vqvae = vqcodec.load_model("photo")  # a VQ-VAE: the model that tiles
    pixels = photo_crop(photo, 320, 256)

    def round_trip(policy: Policy) -> np.ndarray:
        z = inference.encode_latents(vqvae, pixels, policy)
        return inference.decode_pixels(vqvae, vqvae.quantizer.quantize(z, 8), policy)

    whole, tiled = round_trip(Policy.default()), round_trip(Policy(Policy.default().bfloat16, tile_pixels=128))
    assert abs(psnr(pixels, whole) - psnr(pixels, tiled)) < 0.1
    assert psnr(whole, tiled) > 40


def test_one_tile_is_exactly_the_untiled_model(photo):
    vqvae = vqcodec.load_model("photo")  # a VQ-VAE: the model that tiles
    pixels = photo_crop(photo, 64, 48)
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255
    assert torch.equal(inference.encode_latents(vqvae, pixels, Policy(bfloat16=False)), vqvae.encoder(x))


def test_tiles_cover_the_grid_once_with_their_margins():
    covered = np.zeros((21, 10), dtype=int)
    for (cr, cc), (pr, pc), (dr, dc) in inference.tiles(21, 10, tile=8, margin=2):
        covered[cr, cc] += 1
        assert pr.start == max(0, cr.start - 2) and pr.stop == min(21, cr.stop + 2)
        assert (dr, dc) == (cr.start - pr.start, cc.start - pc.start)
    assert (covered == 1).all()


def test_tiled_runs_a_function_of_several_inputs_at_their_own_scales():
    """A stride-2 'network' over an index grid and a pixel image: tiled equals untiled."""
    grid, image = torch.arange(2 * 9 * 7).reshape(1, 2, 9, 7), torch.rand(1, 3, 18, 14)

    def fn(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return g.float().repeat_interleave(2, -1).repeat_interleave(2, -2)[:, :1] + x

    whole = fn(grid, image)
    for margin in (0, 1):
        assert torch.equal(inference.tiled(fn, [grid, image], 9, 7, tile=4, margin=margin), whole)


def test_a_hierarchical_model_tiles_without_seams():
    """A hierarchical model (nn.hierarchy) runs tile by tile too: the analysis step by step,
    the synthesis over every level's grids together. One tile is exactly the whole-image
    model; small tiles with a short margin decode the same grids to nearly the same pixels,
    and a margin that covers the networks' reach to the same pixels up to float rounding."""
    from test_hierarchy import tiny_model
    from test_hierarchy_codec import pixels

    model = tiny_model()  # stride 16: 64-pixel tiles are 4 x 4 positions
    image = pixels(160, 224)
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255
    whole_policy = Policy(bfloat16=False)
    grids = inference.encode_hierarchy(model, image, model.num_stages, 0.01, whole_policy)
    expected, _ = model.encode_indices(x, model.num_stages, 0.01)
    assert all(torch.equal(grid, chosen[0]) for grid, chosen in zip(grids, expected))
    whole = inference.decode_hierarchy(model, grids, whole_policy)
    assert np.array_equal(whole, model.decode_indices([g.unsqueeze(0) for g in grids]).clamp(0, 1)
                          .mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy())
    near = inference.decode_hierarchy(model, grids, Policy(bfloat16=False, tile_pixels=64, margin=2))
    assert psnr(whole, near) > 55 and not np.array_equal(whole, near)
    reach = Policy(bfloat16=False, tile_pixels=64, margin=4)
    assert np.abs(whole.astype(int) - inference.decode_hierarchy(model, grids, reach)).max() <= 1  # float rounding
    tiled_grids = inference.encode_hierarchy(model, image, model.num_stages, 0.01, reach)
    assert all(float((a == b).float().mean()) > 0.99 for a, b in zip(grids, tiled_grids))
