"""Streamed tar shards (data.shard_access=stream; URLs and pipe: commands): coverage of every epoch, shares of
processes, exact resume of the data order and of a run, HTTP and pipe: sources, bad input."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from conftest import BITWISE, tiny_config, write_shards
from repre.core import checkpoint_io as ckpt_io
from repre.data.pipeline import Stages, ViewDataset, pretrain_loader, view_spec
from repre.data.splits import train_source
from repre.data.stream import KEY_BITS, StreamShards, StreamViews, read_samples
from repre.engine.checkpoints import Checkpoints
from repre.engine.trainer import Trainer
from repre.errors import UserError

CUDA = torch.device("cuda")  # Stages.of reads the type alone: the stages of a GPU run, without a GPU

SHARDS, PER_SHARD = 6, 10


@pytest.fixture
def shards(tmp_path) -> Path:
    write_shards(tmp_path / "train", shards=SHARDS, per_shard=PER_SHARD)
    return tmp_path / "train"


def stream_config(root: str, *extra: str):
    return tiny_config("data.name=shards", f"data.root={root}", "data.shard_access=stream", "data.image_size=16",
                       "train.batch_size=4", "data.shuffle_block=7", "train.max_steps=20", *extra)


def stream(cfg, rank: int = 0, world: int = 1) -> StreamViews:
    source = train_source(cfg)
    views = ViewDataset(source, view_spec(cfg, source), cfg.train.seed)
    return StreamViews(source, views, cfg.train.seed, cfg.data.shuffle_block, rank, world)


def keys(samples) -> list[tuple[int, int]]:
    return [(s["index"] >> KEY_BITS, s["index"] & ((1 << KEY_BITS) - 1)) for s in samples]


def test_every_epoch_gives_every_image_once_split_between_processes(shards):
    cfg = stream_config(str(shards))
    whole = [next(it) for it in [iter(stream(cfg))] for _ in range(2 * SHARDS * PER_SHARD)]
    first, second = keys(whole[: SHARDS * PER_SHARD]), keys(whole[SHARDS * PER_SHARD:])
    everything = {(s, p) for s in range(SHARDS) for p in range(PER_SHARD)}
    assert set(first) == set(second) == everything and first != second  # reshuffled per epoch
    assert [s["stream"][1] for s in (whole[0], whole[-1])] == [0, 1]  # (worker, epoch, ...) positions
    shares = [keys(next(it) for it in [iter(stream(cfg, r, 2))] for _ in range(SHARDS * PER_SHARD // 2))
              for r in range(2)]
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == everything
    assert {s for s, _ in shares[0]} & {s for s, _ in shares[1]} == set()  # whole shards per process


@pytest.mark.parametrize("step", [5, 17])
def test_a_resumed_loader_gives_the_batches_of_an_uninterrupted_one(shards, step):
    """Two workers, blocks of 7, 30 images per worker epoch: from the positions of the batches consumed before
    `step`, the loader continues with exactly the same batches (views included), across block and epoch ends."""
    cfg = stream_config(str(shards), "train.num_workers=2")
    source = train_source(cfg)
    loader = iter(pretrain_loader(cfg, source, 0, False))
    batches = [next(loader) for _ in range(24)]
    positions = {}
    for b in batches[:step]:
        positions[b["stream"][0]] = tuple(b["stream"][1:])
    resumed = iter(pretrain_loader(cfg, source, step, False, positions=positions))
    for want in batches[step:]:
        got = next(resumed)
        assert got["index"].tolist() == want["index"].tolist()
        assert torch.equal(got["views"], want["views"])
    assert {b["stream"][1] for b in batches} == {0, 1}  # an epoch boundary is crossed


def test_a_run_crashed_after_a_checkpoint_resumes_to_the_same_weights(shards, tmp_path, monkeypatch):
    settings = ["train.num_workers=2", "train.max_steps=8", "train.checkpoint_every=4", "train.log_every=4",
                "eval.knn.enabled=false", *BITWISE]
    cfg = stream_config(str(shards), *settings)
    Trainer(cfg, tmp_path / "whole").fit()
    save = Checkpoints.save

    def crash_after_step_4(self, final=False):
        path = save(self, final)
        if self.state.step == 4:
            raise RuntimeError("simulated crash")
        return path

    monkeypatch.setattr(Checkpoints, "save", crash_after_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, tmp_path / "crashed").fit()
    monkeypatch.setattr(Checkpoints, "save", save)
    resumed = Trainer(cfg, tmp_path / "crashed", resume=True)
    assert resumed.state.step == 4  # from the checkpoint (a run started again would reach the same weights)
    assert resumed.fit()["completed"]
    a, b = (ckpt_io.load(tmp_path / run / "checkpoints" / "last.pt") for run in ("whole", "crashed"))
    assert not [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert set(a["stream"]["ranks"][0]) == {0, 1}


def test_pipe_and_http_give_what_the_files_give(shards):
    pattern = "part-{0000..0005}.tar"
    want = keys_of(str(shards / pattern))
    assert keys_of(f"pipe:cat {shards}/{pattern}") == want
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert keys_of(f"http://127.0.0.1:{server.server_address[1]}/{pattern}") == want
    finally:
        server.shutdown()


def keys_of(root: str) -> list[tuple[int, int]]:
    return keys(next(it) for it in [iter(stream(stream_config(root)))] for _ in range(SHARDS * PER_SHARD))


@pytest.fixture
def no_retry_wait(monkeypatch):
    from repre.data import stream

    monkeypatch.setattr(stream, "RETRY_WAIT", 0.0)


def test_a_failing_shard_is_skipped_and_all_failing_is_an_error(shards, repre_log, no_retry_wait, tmp_path):
    samples = list(read_samples("pipe:cat /nonexistent/x.tar"))
    assert samples == [] and "exited with status" in repre_log.text and "3 times" in repre_log.text
    with pytest.raises(UserError, match="gave no readable image"):
        next(iter(stream(stream_config("pipe:cat /nonexistent/part-{0..5}.tar"))))
    garbage = tmp_path / "garbage"  # shards that read but hold no decodable image: an error, not an endless loop
    for i in range(2):
        write_shards(garbage, shards=1, per_shard=3, start=10 * i)
        (garbage / "part-0000.tar").rename(garbage / f"bad-{i}.tar")
    for shard in garbage.glob("bad-*.tar"):
        shard.write_bytes(shard.read_bytes().replace(b"\x89PNG", b"\x00PNG"))
    with pytest.raises(UserError, match="gave no readable image"):
        next(iter(stream(stream_config(str(garbage)))))


def test_an_empty_shard_is_passed_over_by_every_worker_and_by_the_first_images(shards, repre_log, monkeypatch):
    """An empty shard holds no image: the pictures' first images come from the next shard, and a data worker
    dealt it alone for an epoch goes on with the next epoch's (it stopped the run)."""
    import tarfile

    with tarfile.open(shards / "part-0000.tar", "w"):  # the first shard, now empty
        pass
    cfg = stream_config(str(shards))
    source = train_source(cfg)
    assert len(source) == PER_SHARD and source.load(0)[0].shape[0] == 3  # the first images of part-0001
    views = ViewDataset(source, view_spec(cfg, source), cfg.train.seed)
    from repre.data import stream as stream_module

    for worker in range(SHARDS):  # as many data workers as shards: each is dealt one an epoch
        info = type("WorkerInfo", (), {"num_workers": SHARDS, "id": worker})
        monkeypatch.setattr(stream_module, "get_worker_info", lambda info=info: info)
        samples = iter(StreamViews(source, views, cfg.train.seed, cfg.data.shuffle_block, 0, 1))
        assert len([next(samples) for _ in range(PER_SHARD)]) == PER_SHARD  # the one dealt the empty shard too
    assert "hold no image (epoch" in repre_log.text
    with pytest.raises(UserError, match=r"gave no images"):  # shards with none at all: said before the run
        len(StreamShards(f"pipe:cat {shards / 'part-0000.tar'}"))


def test_shards_that_cannot_be_read_are_an_error_at_once_not_passed_over_as_empty(shards, no_retry_wait,
                                                                                     monkeypatch):
    """Only a shard read whole with nothing in it is passed over: failing ones (bad credentials, a wrong URL)
    stop the run after one reading each, not after one per shard and epoch."""
    from repre.data import stream as stream_module

    calls, original = [], stream_module._members
    monkeypatch.setattr(stream_module, "_members", lambda url: calls.append(url) or original(url))
    with pytest.raises(UserError, match="gave no images .see the warnings above"):
        len(StreamShards("pipe:false {0..7}"))
    assert len(calls) == 3  # the first shard's 3 attempts, not the 7 others'
    calls.clear()
    with pytest.raises(UserError, match="gave no readable image .see the warnings above"):
        next(iter(stream(stream_config("pipe:false {0..7}"))))
    assert len(calls) == 3 * 8  # one epoch: each shard's 3 attempts


def test_a_command_that_goes_on_after_its_shard_is_not_waited_for(shards, repre_log, no_retry_wait, monkeypatch):
    """The shard ends at its end-of-archive blocks: what the command does after (an exit status, a pause) is
    not the shard's."""
    from repre.data import stream as stream_module

    monkeypatch.setattr(stream_module, "PIPE_STALL", 0.5)
    for tail in ("exit 3", "sleep 5"):
        assert len(list(read_samples(f"pipe:cat {shards}/part-0000.tar; {tail}"))) == PER_SHARD
    assert "broke off" not in repre_log.text and "gave no data" not in repre_log.text


def test_a_compressed_shard_in_a_stream_is_named_as_the_likely_cause(shards, tmp_path, repre_log, no_retry_wait):
    import gzip

    (tmp_path / "s.tar.gz").write_bytes(gzip.compress((shards / "part-0000.tar").read_bytes()))
    assert list(read_samples(f"pipe:cat {tmp_path / 's.tar.gz'}")) == []
    assert "shards are read as plain .tar; a compressed one is decompressed in the command" in repre_log.text
    assert len(list(read_samples(f"pipe:zcat {tmp_path / 's.tar.gz'}"))) == PER_SHARD
    assert list(read_samples(str(tmp_path / "s.tar.gz"))) == []  # a local file: said once, not "copy it again"
    assert "s.tar.gz is not a plain tar (invalid header) (no tar header" in repre_log.text


def test_a_local_shard_empty_or_cut_short_is_named_so_and_not_read_again(shards, tmp_path, repre_log, monkeypatch):
    """A file reads the same again: a shard of 0 bytes was "broke off ... (empty file)" and one cut inside a
    member "broke off", each read 3 times (1 s, 2 s apart), every epoch."""
    from repre.data import stream

    monkeypatch.setattr(stream, "RETRY_WAIT", 1e9)  # a wait would hang the test
    (tmp_path / "empty.tar").write_bytes(b"")
    failed = []
    assert list(read_samples(str(tmp_path / "empty.tar"), failed=failed)) == []
    assert "empty.tar is empty (0 bytes): none read; copy it again" in repre_log.text
    import tarfile

    from conftest import add, png_bytes

    with tarfile.open(tmp_path / "cut.tar", "w") as tar:
        add(tar, "a.png", png_bytes(0))
        add(tar, "b.png", png_bytes(1, size=200))  # ~120 kB: cut inside its data
    whole = (tmp_path / "cut.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[:60_000])
    assert [key for key, _, _ in read_samples(str(tmp_path / "cut.tar"), failed=failed)] == ["a"]
    assert "cut.tar stops in a member after 1 samples" in repre_log.text and "reading it again" not in repre_log.text
    assert failed == [str(tmp_path / "empty.tar"), str(tmp_path / "cut.tar")]


def test_a_shard_that_breaks_off_is_read_again_without_repeats(shards, repre_log, no_retry_wait, tmp_path):
    """The first reading stops after 5,000 bytes with an error (a dropped connection); the second gives the rest."""
    shard, flag = shards / "part-0000.tar", tmp_path / "tried"
    cmd = f"pipe:if [ -f {flag} ]; then cat {shard}; else touch {flag}; head -c 5000 {shard}; exit 1; fi"
    want = [key for key, _, _ in read_samples(str(shard))]
    assert [key for key, _, _ in read_samples(cmd)] == want
    assert "reading it again" in repre_log.text


def test_a_command_that_stalls_is_a_shard_that_broke_off(shards, repre_log, no_retry_wait, monkeypatch):
    """A pipe: command that gives no data (a network that hangs) would hold its data worker, and the run, for
    good: it is read again, then passed over, as an HTTP read's timeout is."""
    import time

    from repre.data import stream as stream_module

    monkeypatch.setattr(stream_module, "PIPE_STALL", 0.2)
    start = time.perf_counter()
    assert list(read_samples(f"pipe:sleep 30; cat {shards}/part-0000.tar")) == []
    assert time.perf_counter() - start < 10 and "gave no data for 0.2 s" in repre_log.text
    # a wait within the limit, by a margin that a busy machine's start of the command does not eat
    monkeypatch.setattr(stream_module, "PIPE_STALL", 3.0)
    assert len(list(read_samples(f"pipe:sleep 0.5; cat {shards}/part-0000.tar"))) == PER_SHARD


def test_a_command_that_talks_on_stderr_does_not_stall(shards):
    """wget and curl report progress on stderr: 1 MB of it must not fill a pipe and stall the stream."""
    cmd = f"pipe:python3 -c \"import sys; sys.stderr.write('x' * 1000000)\"; cat {shards}/part-0000.tar"
    assert len(list(read_samples(cmd))) == PER_SHARD


def test_every_stream_reads_as_many_shards_each_epoch(shards):
    """7 shards for 2 x 2 streams: each reads one a epoch, a different three sit out, none is read twice."""
    cfg = stream_config(str(shards))
    views = stream(cfg, 0, 2)
    views.shards.urls = views.shards.urls + [views.shards.urls[0]]  # 7 "shards"
    for epoch in range(3):
        mine = [views._shards_of(epoch, w, 2) for w in range(2)]
        other = stream(cfg, 1, 2)
        other.shards.urls = views.shards.urls
        theirs = [other._shards_of(epoch, w, 2) for w in range(2)]
        every = [s for part in mine + theirs for s in part]
        assert [len(part) for part in mine + theirs] == [1, 1, 1, 1] and len(set(every)) == 4


def test_stream_settings_that_cannot_work_say_what_to_do(shards):
    with pytest.raises(UserError, match="data.stream_size"):
        tiny_config("data.name=shards", "data.root=pipe:cat x.tar", "train.max_steps=0", "train.epochs=1")
    cfg = stream_config(str(shards), "train.num_workers=7")
    with pytest.raises(UserError, match="6 shards cannot feed 1 process"):
        pretrain_loader(cfg, train_source(cfg), 0, False)
    with pytest.raises(UserError, match="shard_access=random"):
        from repre.data.splits import eval_source

        eval_source(cfg, "test")
    with pytest.raises(UserError, match="data.subset=8 picks images by index"):
        stream_config(str(shards), "data.subset=8")
    assert len(StreamShards(str(shards), 60)) == 60


def test_streamed_batches_can_be_cut_on_the_device(shards):
    """data.device_stages=crops with streamed shards: packed batches with the stream position, the same images
    (and parameters) in the same order as the worker path."""
    from repre.data.device_views import crop_on_device

    cfg = stream_config(str(shards))
    device = stream_config(str(shards), "data.device_stages=crops")
    source = train_source(cfg)
    workers = next(iter(pretrain_loader(cfg, source, 0, False, Stages.of(cfg, CUDA))))
    packed = next(iter(pretrain_loader(device, source, 0, False, Stages.of(device, CUDA))))
    assert "views" not in packed and packed["stream"] == workers["stream"]
    assert packed["index"].tolist() == workers["index"].tolist()
    cut = crop_on_device(dict(packed), 16, 12)
    assert (cut["views"].int() - workers["views"].int()).abs().max() <= 1


def test_resuming_with_other_workers_restarts_the_streams_with_a_warning(shards, tmp_path, repre_log):
    settings = ["train.max_steps=4", "train.checkpoint_every=2", "train.log_every=2", "eval.knn.enabled=false"]
    Trainer(stream_config(str(shards), *settings, "train.num_workers=2"), tmp_path / "run").fit()
    resumed = Trainer(stream_config(str(shards), *settings, "train.max_steps=6", "train.num_workers=1"),
                      tmp_path / "run", resume=True)
    assert resumed.data.positions == {0: (0, 0, ())}
    assert "every stream restarts at the start of epoch 0" in repre_log.text
    assert "to go on exactly, stop and resume with 1 process and --set train.num_workers=2" in repre_log.text
    assert resumed.fit()["completed"]


def test_streamed_shards_need_as_many_data_workers_in_every_process(monkeypatch):
    """Each process deals the shards to its own data workers: with other counts the processes read other
    numbers of shards (one left unread each epoch) and their streams cannot resume exactly."""
    from repre.engine import trainer

    told = []  # rank 0's values, then this process's: what the gather gives rank 1

    def gather(own):
        told.append(own)
        return [told[0], own]

    monkeypatch.setattr(trainer.dist, "is_distributed", lambda: True)
    monkeypatch.setattr(trainer.dist, "gather_objects", gather)
    streamed = ["data.name=shards", "data.root=pipe:cat s-{0..7}.tar"]
    trainer.check_processes_agree(tiny_config(*streamed, "train.num_workers=1"), 64, 4)
    with pytest.raises(UserError, match=r"train.num_workers \(the data workers streamed shards are dealt to\) is 1 "
                                        r"on rank 0, 2 on rank 1"):
        trainer.check_processes_agree(tiny_config(*streamed, "train.num_workers=2"), 64, 4)
    told.clear()
    trainer.check_processes_agree(tiny_config("train.num_workers=1"), 64, 4)
    trainer.check_processes_agree(tiny_config("train.num_workers=2"), 64, 4)  # indexed: each process its own


def test_a_resume_with_other_workers_is_said_by_the_first_process_alone(shards, repre_log, monkeypatch):
    """The warning is the run's: every process of 32 said it."""
    from repre.data import pipeline

    monkeypatch.setattr(pipeline.dist, "is_main", lambda: False)
    data = pipeline.PretrainData.__new__(pipeline.PretrainData)
    data.cfg, data.source = stream_config(str(shards), "train.num_workers=1"), train_source(stream_config(str(shards)))
    data.load_state_dict({"workers": 2, "ranks": [{0: (1, 3, (8,)), 1: (0, 5, ())}]})
    assert data.positions == {0: (0, 0, ())} and "every stream restarts" not in repre_log.text


def test_a_streamed_run_says_once_why_it_has_no_k_nn_and_how_to_measure_it_after(shards, tmp_path, repre_log):
    """k-NN reads labelled images at random: a streamed run skips its periodic and final k-NN with one note,
    whose --set settings are told to be for `repre eval knn` on the run, not for this run."""
    from repre.pretraining import pretrain

    cfg = stream_config(str(shards), "train.max_steps=4", "train.eval_every=1", "eval.knn.enabled=true")
    assert pretrain(cfg, tmp_path / "run")["knn_top1"] is None
    notes = [r.getMessage() for r in repre_log.records if "k-NN skipped" in r.getMessage()]
    assert len(notes) == 1 and "data.shard_access=random" in notes[0]
    assert notes[0].endswith(f"(those settings are for `repre eval knn --checkpoint {tmp_path / 'run'}`, once the "
                             "run has a checkpoint)")


def test_a_label_that_is_no_integer_is_read_as_unlabelled_and_said(tmp_path, repre_log):
    """Indexed shards refuse it before the run; a stream meets it mid-run, where one file should not stop it."""
    import tarfile

    from conftest import add, png_bytes

    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        add(tar, "a.png", png_bytes(0))
        add(tar, "a.cls", b"cat")
        add(tar, "b.png", png_bytes(1))
        add(tar, "b.cls", b"2")
        add(tar, "c.png", png_bytes(2))
        add(tar, "c.cls", b"--3")  # no integer to int() either: it stopped the stream
    assert [(key, label) for key, _, label in read_samples(str(tmp_path / "bad.tar"))] == [("a", -1), ("b", 2),
                                                                                         ("c", -1)]
    assert "a.cls holds 'cat', not an integer label" in repre_log.text


def test_unreadable_images_at_the_end_of_an_epoch_are_counted_with_the_next_one(tmp_path):
    """The count rides on the worker's next sample, in the next epoch if need be (it was dropped there)."""
    import tarfile
    from itertools import islice

    from conftest import add, png_bytes

    with tarfile.open(tmp_path / "part-0000.tar", "w") as tar:
        for i in range(2):
            add(tar, f"{i}.png", png_bytes(i))
        add(tar, "2.png", b"not an image")
    views = stream(stream_config(str(tmp_path / "part-0000.tar"), "data.shuffle_block=1"))
    samples = list(islice(iter(views), 4))  # epoch 0: 2 images, then 1 unreadable; epoch 1 starts
    assert [s["skipped"] for s in samples] == [0, 0, 1, 0]
