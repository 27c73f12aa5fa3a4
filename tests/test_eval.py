import torch

from repre.eval.knn import knn_predict
from repre.eval.linear import top1, train_linear


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 4
    y = torch.arange(500) % 5
    x = centers[y] + torch.randn(500, 16, generator=g)
    head = train_linear(x[:400], y[:400], 5, lr=1e-2, wd=0.0, epochs=20)
    assert top1(head, x[400:], y[400:]) > 0.98


def test_knn_weighted_vote():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    assert knn_predict(bank, labels, queries, k=2, temperature=0.07, classes=2).tolist() == [0, 1]
    # with k = 3 every query sees all three; the two close class-0 neighbours outvote for the first
    assert knn_predict(bank, labels, queries, k=3, temperature=0.07, classes=2).tolist() == [0, 1]
