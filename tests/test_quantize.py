import torch

from vqcodec.nn.quantize import ResidualVQ, VectorQuantizer, kmeans


def test_nearest_picks_the_closest_code():
    vq = VectorQuantizer(4, 2)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    points = torch.tensor([[0.9, 0.1], [4.0, 4.5], [0.1, 0.2], [-0.1, 0.8]])
    assert vq.nearest(points).tolist() == [1, 3, 0, 2]


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(100, 2) for c in centers])
    found = kmeans(points, 3, iterations=20)
    assert torch.cdist(centers, found).min(dim=1).values.max() < 0.5


def test_dead_codes_are_restarted_onto_data():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.5, dead_code_threshold=1.0)
    data = torch.randn(256, 2) + 100.0  # far from every initial code
    vq.update(data, vq.nearest(data))
    assert (torch.cdist(vq.codebook, data).min(dim=1).values < 5).all()


def test_more_stages_reduce_the_error_and_dequantize_inverts_quantize():
    torch.manual_seed(0)
    rvq = ResidualVQ(num_stages=4, codebook_size=32, dim=4)
    rvq.train()
    z = torch.randn(8, 4, 6, 6)
    for _ in range(20):
        rvq(z)
    rvq.eval()
    errors = []
    for n in range(1, 5):
        indices = rvq.quantize(z, n)
        assert indices.shape == (8, n, 6, 6)
        errors.append((rvq.dequantize(indices) - z).pow(2).mean().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_quantizer_dropout_keeps_a_prefix_per_example():
    torch.manual_seed(0)
    rvq = ResidualVQ(num_stages=3, codebook_size=16, dim=2)
    rvq.train()
    z = torch.randn(2, 2, 3, 3)
    rvq(z)
    rvq.eval()
    z_q, indices, _ = rvq(z, keep_stages=torch.tensor([1, 3]))
    torch.testing.assert_close(z_q[0], rvq.dequantize(indices[:1, :1])[0])
    torch.testing.assert_close(z_q[1], rvq.dequantize(indices[1:, :3])[0])
