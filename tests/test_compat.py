"""Each PyTorch interface that repre uses without it being public (repre.core.compat), checked against the
installed PyTorch: a release that changes one fails here, not in the middle of a run."""

from __future__ import annotations

import pytest
import torch

from repre.core import compat


def test_onednn_bf16_probe_answers():
    assert isinstance(compat.onednn_has_bf16(), bool)
    assert hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")  # else the probe always answers False


@pytest.mark.parametrize("skip", [True, False])
def test_a_fused_adamw_step_skips_itself_on_the_device_flag(skip):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4))
    optimizer = torch.optim.AdamW([w], lr=0.1, fused=True)
    assert compat.skips_steps_on_device(optimizer)
    assert not compat.skips_steps_on_device(torch.optim.AdamW([w], lr=0.1))
    before = w.detach().clone()
    w.grad = torch.ones(4)
    compat.step_unless(optimizer, torch.tensor(float(skip)))
    assert torch.equal(w.detach(), before) == skip
    assert not hasattr(optimizer, "found_inf") and not hasattr(optimizer, "grad_scale")  # nothing left behind
    if skip:  # the state is untouched too: a later step is the first one
        assert not optimizer.state[w] or float(optimizer.state[w]["step"]) == 0


def test_scale_each_multiplies_every_tensor_by_its_own_factor():
    tensors = [torch.ones(3), torch.ones(2, 2)]
    compat.scale_each_(tensors, torch.tensor([2.0, 0.5]))
    assert torch.equal(tensors[0], torch.full((3,), 2.0)) and torch.equal(tensors[1], torch.full((2, 2), 0.5))


def test_copy_each_copies_every_tensor():
    targets, sources = [torch.zeros(3), torch.zeros(2, 2)], [torch.arange(3.0), torch.ones(2, 2)]
    compat.copy_each_(targets, sources)
    assert all(torch.equal(t, s) for t, s in zip(targets, sources, strict=True))
    compat.copy_each_([], [])  # a model without batch norm: nothing to copy


def test_ema_equals_the_per_tensor_update_bit_for_bit():
    torch.manual_seed(0)
    targets, sources = [torch.randn(5), torch.randn(3, 4)], [torch.randn(5), torch.randn(3, 4)]
    expected = [t.clone().mul_(0.996).add_(s, alpha=1.0 - 0.996) for t, s in zip(targets, sources, strict=True)]
    compat.ema_(targets, sources, 0.996)
    assert all(torch.equal(t, e) for t, e in zip(targets, expected, strict=True))


def test_dynamo_graph_limit_is_raised_in_the_block_and_put_back():
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    with compat.compiled_graphs_per_unit(before + 5):
        assert getattr(config, name) == before + 5
    assert getattr(config, name) == before


def test_inductor_deterministic_mode_is_set_in_the_block_and_put_back():
    import torch._inductor.config as config

    assert hasattr(config, "deterministic")
    before = config.deterministic
    with compat.inductor_deterministic():
        assert config.deterministic is True
    assert config.deterministic == before


def test_a_compiled_backward_runs_again_on_one_forward_in_the_block():
    """What the loss-balance diagnostics do in a compiled run: two gradients from one forward's graph, after
    steps that compiled its backward (AOTAutograd, as Inductor uses it)."""
    linear = torch.nn.Linear(4, 4)

    def two_gradients_of_one_forward() -> None:
        torch._dynamo.reset()
        f = torch.compile(lambda x: (linear(x).relu() * linear(x).sigmoid()).sum(), backend="aot_eager")
        x = torch.randn(3, 4)
        for _ in range(2):
            f(x).backward()
        out = f(x)
        torch.autograd.grad(out, [linear.weight], retain_graph=True)
        torch.autograd.grad(out, [linear.weight])

    with pytest.raises(RuntimeError, match="donated buffers"):  # the failure the block exists for
        two_gradients_of_one_forward()
    with compat.reusable_compiled_backward():
        two_gradients_of_one_forward()
    torch._dynamo.reset()


def test_eager_runs_without_compiling():
    assert hasattr(torch.compiler, "set_stance")
    calls = []
    fn = torch.compile(lambda x: calls.append(torch.compiler.is_compiling()) or x + 1, backend="eager")
    assert torch.equal(compat.eager(fn, torch.zeros(1)), torch.ones(1))
    assert calls == [False]


def test_a_loaders_workers_stop_as_the_block_ends_an_error_included():
    """Without the clean-up the error's traceback (here kept by pytest) holds the iterator and its worker; and
    after a block left normally (the training loop done) the iterator lives on through the last checkpoint and
    the final evaluations, where an error would keep it."""
    import multiprocessing

    from torch.utils.data import DataLoader

    with pytest.raises(RuntimeError, match="in the step"):
        with compat.workers_stopped(iter(DataLoader(list(range(8)), batch_size=2, num_workers=1))) as batches:
            next(batches)
            raise RuntimeError("an error in the step")
    assert not multiprocessing.active_children()
    with compat.workers_stopped(iter(DataLoader(list(range(8)), batch_size=2, num_workers=1))) as batches:
        next(batches)
    assert not multiprocessing.active_children()


def test_the_workers_of_every_live_loader_iterator_are_stopped():
    """What runs at the interpreter's exit (`repre.data.workers`): loaders a traceback kept alive are found and
    their workers stopped, each by the iterator's own clean-up."""
    import multiprocessing

    from torch.utils.data import DataLoader

    kept = [iter(DataLoader(list(range(8)), batch_size=2, num_workers=1)) for _ in range(2)]
    assert [next(batches).tolist() for batches in kept] == [[0, 1], [0, 1]]
    assert len(multiprocessing.active_children()) == 2
    compat.stop_live_loader_workers()
    assert not multiprocessing.active_children()


def test_an_evaluation_loader_s_workers_stop_when_its_reading_fails():
    """The k-NN's, probes' and fine-tuning's loader iterates through a generator of its own: an error in the
    reading left its workers alive for as long as the traceback was kept (a notebook's whole session)."""
    import multiprocessing

    from repre.data.evaluation import EvalLoader
    from repre.eval.features import frozen_batches

    def fail(x):
        raise RuntimeError("out of memory in the encoder")

    batches = [(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))] * 4
    loader = EvalLoader(batches, batch_size=None, num_workers=1,
                        collate_fn=lambda b: (b[0], b[1], []))
    runtime = type("Rt", (), {"device": torch.device("cpu"), "dtype": torch.float32, "amp": False})()
    with pytest.raises(RuntimeError, match="out of memory"):
        list(frozen_batches(torch.nn.Identity(), loader, runtime, fail))
    assert not multiprocessing.active_children()


def test_torch_s_batch_norm_base_is_what_its_batch_norms_subclass():
    """repre's SyncBatchNorm subclasses it and overrides its input check, as BatchNorm1d/2d do."""
    assert issubclass(torch.nn.BatchNorm1d, compat.BatchNormBase) and issubclass(torch.nn.BatchNorm2d,
                                                                                compat.BatchNormBase)
    assert "_check_input_dim" in vars(torch.nn.BatchNorm1d)  # the hook each subclass defines
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(4)(torch.zeros(2, 4, 3, 3))  # 4-D input refused by BatchNorm1d's own check


def test_a_timm_vit_adds_its_position_embedding_through_the_replaced_method():
    """`replace_pos_embed`: timm's forward_features calls the instance's `_pos_embed`, and a deep copy calls
    its own copy's."""
    import copy

    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0)
    seen = []

    def pos_embed(self, x):
        seen.append(self)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    compat.replace_pos_embed(model, pos_embed)
    expected = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0)
    expected.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.forward_features(x), expected.forward_features(x), atol=1e-6) and seen == [model]
    twin = copy.deepcopy(model)
    twin.forward_features(x)
    assert seen[-1] is twin
