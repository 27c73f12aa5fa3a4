"""Every use of a PyTorch (or timm) interface that is not public, in one place, each with a test
(tests/test_compat.py) that fails when a newer PyTorch or timm changes it. Callers elsewhere use only these
names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# torch's base of its batch norms: BatchNorm1d/2d/3d subclass it, each with `_check_input_dim`; a batch norm of
# its own (repre.models.sync_bn) subclasses it the same way, for the same parameters, buffers and state dict
BatchNormBase = torch.nn.modules.batchnorm._BatchNorm


def replace_pos_embed(model: torch.nn.Module, pos_embed: Callable[..., torch.Tensor]) -> None:
    """Make `pos_embed(model, x)` this timm ViT's `_pos_embed`, the step of its `forward_features` that adds the
    position embedding (and the prefix tokens) to the patch tokens: this instance's only (a deep copy rebinds
    it to the copy). ValueError where the model's step is not timm VisionTransformer's (tokens in, tokens out),
    which the replacements stand in for: another family's (Eva's also returns its rotary table) would fail at
    the first forward."""
    import types

    from timm.models.vision_transformer import VisionTransformer

    if getattr(type(model), "_pos_embed", None) is not VisionTransformer._pos_embed:
        raise ValueError(f"its position step for inputs of other sizes (dynamic_img_size) replaces timm "
                         f"VisionTransformer's, which {type(model).__name__} does not use")
    # torch types a module's attributes Tensor | Module; it sets any other value as a plain attribute
    model._pos_embed = types.MethodType(pos_embed, model)  # type: ignore[assignment]


def class_token_first(model: torch.nn.Module) -> bool:
    """Whether a timm ViT has the token layout the `_pos_embed` replacements (MoCo v3's and DINO's) assume: one
    prefix token, the class token, and a position table that covers it (not a deit3's `no_embed_class`, no
    registers, no `pos_embed='none'`)."""
    return (getattr(model, "num_prefix_tokens", None) == 1 and getattr(model, "cls_token", None) is not None
            and getattr(model, "pos_embed", None) is not None and not getattr(model, "no_embed_class", True))


@contextmanager
def workers_stopped(batches: Iterator[T]) -> Iterator[Iterator[T]]:
    """`batches`, a DataLoader's iterator (or a generator over one, closed), whose worker processes stop as the
    block ends, an exception included. An exception's traceback keeps the iterator alive: collected later, each
    worker would wait out a 5 s join timeout in the caller's process, and at the interpreter's exit
    multiprocessing's SIGTERM, which repre's workers ignore (`worker_started`), left the process waiting for
    them for good. `_shutdown_workers` is the multi-process iterator's own clean-up (the single-process
    iterator has none)."""
    try:
        yield batches
    finally:
        stop = getattr(batches, "_shutdown_workers", None) or getattr(batches, "close", None)
        if stop is not None:
            stop()


def stop_live_loader_workers() -> None:
    """Stop the worker processes of every multi-process DataLoader iterator still alive in this process (found
    among the garbage collector's objects), each by its own clean-up, `_shutdown_workers`: each worker told to
    end, then joined. An iterator whose construction failed half-way is passed over."""
    import gc

    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for obj in gc.get_objects():
        if issubclass(type(obj), _MultiProcessingDataLoaderIter):  # type(): no attribute read (some warn)
            try:
                obj._shutdown_workers()
            except Exception:  # noqa: BLE001 - one half-built: the next one
                continue


def onednn_has_bf16() -> bool:
    """oneDNN's own answer to whether it runs bf16 here: yes also on x86 CPUs with AVX-512 but no bf16
    instructions, where it emulates bf16 (`repre.core.runtime.cpu_has_bf16` asks the CPU too)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def skips_steps_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` can skip itself on a device flag without a host sync (fused AdamW): the
    protocol GradScaler uses for fp16, `_step_supports_amp_scaling` with `grad_scale` and `found_inf`."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """`optimizer.step()`, which leaves the weights and its state untouched where `found_inf` (a float scalar on
    the device, 1.0 or 0.0) is 1.0; decided on the device, no host sync. Needs `skips_steps_on_device`.

    GradScaler's public API decides from the gradients alone, where the run also skips for a non-finite loss
    and agrees on the skip across processes: hence the optimizer's own input, as GradScaler passes it."""
    # (attributes torch's Optimizer does not declare: the protocol is GradScaler's own)
    optimizer.grad_scale, optimizer.found_inf = None, found_inf  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]


def scale_each_(tensors: list[torch.Tensor], scales: torch.Tensor) -> None:
    """tensors[i] *= scales[i], in place, in one fused kernel launch where the device has one."""
    torch._foreach_mul_(tensors, list(scales.to(tensors[0].dtype).unbind()))


def copy_each_(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """targets[i].copy_(sources[i]), in one multi-tensor kernel launch where the device has one."""
    if targets:
        torch._foreach_copy_(targets, sources)


def ema_(targets: list[torch.Tensor], sources: list[torch.Tensor], m: float) -> None:
    """targets[i] = targets[i] * m + sources[i] * (1 - m), in place: on a GPU a few multi-tensor kernel
    launches for all the tensors, where a loop launches two a tensor (about 300 for a ViT-S and its projector).
    On a CPU it runs that loop: the same values (tests/test_compat.py)."""
    torch._foreach_mul_(targets, m)
    torch._foreach_add_(targets, sources, alpha=1.0 - m)


@contextmanager
def compiled_graphs_per_unit(limit: int) -> Iterator[None]:
    """Dynamo's limit of graphs per compiled unit raised to at least `limit` inside the block, then put back."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    before = getattr(config, name)
    setattr(config, name, max(before, limit))
    try:
        yield
    finally:
        setattr(config, name, before)


@contextmanager
def inductor_deterministic() -> Iterator[None]:
    """Inductor's deterministic mode inside the block (where this PyTorch has it), then put back."""
    import torch._inductor.config as config  # only for compiled deterministic runs

    if not hasattr(config, "deterministic"):
        yield
        return
    before = config.deterministic
    config.deterministic = True
    try:
        yield
    finally:
        config.deterministic = before


@contextmanager
def reusable_compiled_backward() -> Iterator[None]:
    """Compiled backward graphs that run more than once on one forward (`retain_graph=True`) inside the block:
    AOTAutograd's donated buffers, freed by a graph's first backward, off (where this PyTorch has them)."""
    import torch._functorch.config as config

    if not hasattr(config, "donated_buffer"):
        yield
        return
    before = config.donated_buffer
    config.donated_buffer = False
    try:
        yield
    finally:
        config.donated_buffer = before


def eager(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` without compiling (a one-off pass such as an evaluation: new shapes would each
    compile a graph). Where torch.compiler.set_stance is missing (torch < 2.6) `fn` runs as it is: correct, but
    its new shapes compile."""
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is None:
        return fn(*args, **kwargs)
    with stance("force_eager"):
        return fn(*args, **kwargs)
