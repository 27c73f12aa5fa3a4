import pytest
import torch

from repre.engine.optim import clip_or_measure


def _params():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    for p in ps:
        p.grad = torch.randn_like(p) * 3
    return ps


def test_measured_norm_equals_torch_clip_norm():
    a, b = _params(), _params()
    expected = torch.nn.utils.clip_grad_norm_(a, float("inf"))
    torch.testing.assert_close(clip_or_measure(b, 0.0), expected)
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)  # measuring leaves gradients untouched


def test_clipping_bounds_the_norm():
    ps = _params()
    before = clip_or_measure(ps, 0.0)
    returned = clip_or_measure(ps, 1.0)
    torch.testing.assert_close(returned, before)  # the norm before clipping is reported
    torch.testing.assert_close(clip_or_measure(ps, 0.0), torch.tensor(1.0), atol=1e-4, rtol=1e-4)


def test_a_run_with_the_photometric_stage_on_the_device_equals_one_with_it_in_the_workers(tmp_path):
    import json

    from conftest import tiny_config
    from repre.engine.trainer import Trainer

    def losses(where: str) -> list[float]:
        cfg = tiny_config(f"aug.photometric_on={where}", "train.log_every=1", "train.max_steps=3", "eval.knn.enabled=false",
                          "train.precision=fp32")
        Trainer(cfg, tmp_path / where).fit()
        return [json.loads(line)["loss"] for line in (tmp_path / where / "metrics.jsonl").read_text().splitlines()]

    device, workers = losses("device"), losses("workers")
    if torch.cuda.is_available():  # CUDA kernels against the CPU's in the workers: the images differ in rounding
        assert device == pytest.approx(workers, rel=1e-5)
    else:
        assert device == workers
