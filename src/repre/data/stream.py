"""Tar shards read as streams, each from its first byte to its last: for datasets in an object store or on no
local disk. `data.name=shards` streams when `data.root` is a URL (http://, https://) or a `pipe:COMMAND` whose
standard output is the shard (`pipe:aws s3 cp s3://bucket/train-{000000..001023}.tar -`), or with
`data.shard_access=stream`; brace patterns expand as for indexed shards (`repre.data.shards`). Members are
grouped into samples as WebDataset groups them (`KEY.jpg` + optional `KEY.cls`, consecutive in the tar).

Order. Epoch e shuffles the shard list with (seed, e) and cuts it to a multiple of N x W (N processes, W data
workers per process; the few shards left over sit that epoch out, others the next); process r takes every
N-th shard of it, and its worker w every W-th of those, so every stream reads as many shards. A worker reads
its shards one after the other and shuffles their samples in blocks of `data.shuffle_block`: a block is read
whole, then given out in an order drawn from (seed, e, r, w, block). Each worker's stream runs on through the
epochs without end, so processes never wait for each other at an epoch's end; with shards of equal size (as
shard writers make them) the streams' epochs stay aligned, with unequal ones they drift apart by the size
differences. `data.stream_size` sets the steps of `train.epochs`. A shard that breaks off is read again
(3 attempts), skipping what was given out.
The views of an image are keyed by (seed, epoch, shard, position in the shard), as indexed data keys them by
index.

Resume. Every batch carries its worker's position (epoch, samples given out in it, the sizes of the shards it
finished in it); a checkpoint keeps the last position of every worker of every process. A resumed worker
re-reads from the start of the block it was in (at most a block and a shard per worker), so a resumed run sees
exactly the batches of an uninterrupted one when the number of processes and of workers is the same; with other
numbers every stream restarts at the earliest saved epoch, with a warning.

What cannot be streamed: evaluation needs random access (a k-NN bank, labelled splits); point `repre eval` at
a local copy (a folder or indexed shards) of the labelled splits.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import selectors
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from itertools import chain, islice
from typing import BinaryIO, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from repre.config import REMOTE_ROOTS
from repre.core.rng import epoch_seed
from repre.data.folder import MEAN, STD, UnreadableImage, decode, warn_unreadable
from repre.data.shards import AFTER_END, LeftOut, after_end, expand, label_in, member_bytes, samples_of, shard_paths
from repre.errors import UserError

log = logging.getLogger("repre")

KEY_BITS = 24  # an image's key for its views: shard << KEY_BITS | position in the shard
RETRY_WAIT = 1.0  # seconds before reading a broken shard again (times the attempt)


def is_remote(root: str | None) -> bool:
    return root is not None and root.startswith(REMOTE_ROOTS)


def shard_urls(root: str) -> list[str]:
    """The shards `root` names: a URL or pipe: pattern expanded, or a local folder's .tar files, a .tar, a pattern."""
    if is_remote(root):
        return expand(root)
    return [str(p) for p in shard_paths(root)]


def open_shard(url: str) -> BinaryIO | _PipeStream:
    """A readable stream of the shard: a pipe: command's standard output, an HTTP(S) body, or a local file."""
    if url.startswith("pipe:"):
        return _PipeStream(url)
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the user's URL
    return open(url, "rb")  # noqa: SIM115 - closed by the reader


PIPE_STALL = 120.0  # seconds a pipe: command may give no data before its shard counts as broken off


class _PipeStream(io.RawIOBase):
    """A command's standard output. Its standard error goes to a temporary file (a pipe would fill and stall the
    command: `wget` and `curl` report progress there); at the end a non-zero exit is an OSError with its tail.
    The command leads a process group of its own (setsid), so closing early ends every process of a
    pipeline."""

    def __init__(self, url: str) -> None:
        self.url, self.stderr = url, tempfile.TemporaryFile()
        # shell=True: the command is the user's own pipeline, as webdataset's "pipe:" URLs are; unbuffered, so
        # that a wait for its output can be bounded (tarfile reads in blocks of its own)
        self.proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE,  # noqa: S602
                                     stderr=self.stderr, bufsize=0, start_new_session=True)
        assert self.proc.stdout is not None  # stdout=PIPE
        self.stdout = self.proc.stdout
        self.pending, self.at = b"", 0  # what the last read of the pipe gave, and how much of it is passed on
        self.ready: selectors.BaseSelector | None = None
        if os.name != "nt":  # a read that would wait returns at once: the wait is the selector's, bounded
            os.set_blocking(self.stdout.fileno(), False)
            self.ready = selectors.DefaultSelector()  # epoll or kqueue: any descriptor number (select's < 1024)
            self.ready.register(self.stdout, selectors.EVENT_READ)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not len(buffer):
            return 0
        if self.at == len(self.pending):
            self.pending, self.at = self._read(), 0
        n = min(len(buffer), len(self.pending) - self.at)
        memoryview(buffer)[:n] = memoryview(self.pending)[self.at:self.at + n]
        self.at += n
        if n == 0 and self.proc.wait() != 0:
            self.stderr.seek(0)
            err = self.stderr.read().decode("utf-8", "replace").strip()[-300:]
            raise OSError(f"`{self.url[len('pipe:'):]}` exited with status {self.proc.returncode}: {err}")
        return n

    def _read(self) -> bytes:
        """What the pipe holds now (up to 1 MB; b"" at its end), waiting for it at most PIPE_STALL seconds: a
        command that stalls (a network that hangs) is a shard that broke off, as an HTTP read's timeout is."""
        while True:
            try:
                return os.read(self.stdout.fileno(), 1 << 20)
            except BlockingIOError:
                if self.ready is not None and not self.ready.select(PIPE_STALL):
                    raise TimeoutError(f"`{self.url[len('pipe:'):]}` gave no data for {PIPE_STALL:g} s") from None

    def held(self) -> bytes:
        """What the command has written and the reader not taken, without waiting for more (the command may
        go on after its shard's end: its exit is not waited for)."""
        rest = self.pending[self.at:]
        if self.ready is None:  # reads wait (Windows): what was read already
            return rest
        try:
            return rest + os.read(self.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return rest

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        if self.ready is not None:
            self.ready.close()
        self.stdout.close()
        self.stderr.close()
        super().close()


BROKEN = (OSError, tarfile.TarError, http.client.HTTPException)  # what a shard that breaks off raises


def read_samples(url: str, attempts: int = 3, failed: list[str] | None = None) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label or -1) for each sample of a shard, in member order. A shard that breaks off
    (network, a failed command) is read again from its start, skipping what was given out, up to `attempts`
    times (1 s, 2 s apart); then it ends early with a warning, the samples before the break kept, and its url
    added to `failed` (as a damaged one's: an empty shard read whole is not)."""
    failed = [] if failed is None else failed
    given = 0
    for attempt in range(1, attempts + 1):
        try:
            for i, sample in enumerate(_members(url)):
                if i >= given:
                    given += 1
                    yield sample
            return
        except DamagedShard as exc:  # read again, it would stop there again
            log.warning("shard %s %s, after %d samples: the members after it are left out; %s", url, exc, given,
                        exc.advice)
            failed.append(url)
            return
        except BROKEN as exc:
            # a first header that does not parse: a compressed shard is the likely cause, retried in vain
            hint = (" (no tar header: shards are read as plain .tar; a compressed one is decompressed in the "
                    "command, e.g. pipe:zcat FILE.tar.gz)" if given == 0 and "invalid header" in str(exc) else "")
            if isinstance(exc, tarfile.TarError) and not is_remote(url):  # a file reads the same again
                what = ("is empty (0 bytes): none read; copy it again" if given == 0 and str(exc) == "empty file"
                        else f"is not a plain tar ({exc}){hint}" if hint
                        else f"stops in a member after {given} samples ({exc}): the members after it are left "
                        "out; copy it again")
                log.warning("shard %s %s", url, what)
                failed.append(url)
                return
            if attempt == attempts:
                log.warning("shard %s broke off after %d samples (%s)%s, %d times: going on with the next shard",
                            url, given, exc, hint, attempts)
                failed.append(url)
                return
            log.warning("shard %s broke off after %d samples (%s)%s: reading it again", url, given, exc, hint)
            time.sleep(RETRY_WAIT * attempt)


class DamagedShard(Exception):
    """A shard whose member headers stop before its end: read again, it stops there again. Its text says where
    and why, its `advice` what to do."""

    def __init__(self, what: str, advice: str = "copy it again") -> None:
        super().__init__(what)
        self.advice = advice


def _members(url: str) -> Iterator[tuple[str, bytes, int]]:
    """The samples of one reading of a shard (`samples_of`); raises what a broken stream raises (BROKEN), and
    DamagedShard where its headers stop before its end. The members it leaves out are said once a process."""
    left = LeftOut()
    try:
        with open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from samples_of(tar, lambda member: member_bytes(tar, member),
                                  lambda member, text: _label(url, member.name, text), left)
            # tarfile ends quietly where a header is cut short or damaged: a whole end-of-archive block, and zeros
            # after it (tarfile's read-ahead, its stream's private `buf`, then what the stream holds), tell its end
            stop = tar.offset
            if getattr(tar.fileobj, "pos", stop + tarfile.BLOCKSIZE) - stop < tarfile.BLOCKSIZE:
                raise DamagedShard(f"is cut short at byte {stop:,} (no end-of-archive block)")
            held = [stream.held()] if isinstance(stream, _PipeStream) else iter(lambda: stream.read(1 << 20), b"")
            if found := after_end(chain([getattr(tar.fileobj, "buf", b"")], held)):
                why, advice = AFTER_END[found]
                raise DamagedShard(f"{why} at byte {stop:,}", advice)
    finally:
        _say_left_out(left, url)


_said: set[str] = set()  # the kinds of members left out (and label files that held no integer) said once a process


def _say_left_out(left: LeftOut, url: str) -> None:
    """Warn of the first member of each kind a shard's grouping left out, once a process: a stream reads on
    through the epochs, each shard again and again."""
    for kind in ("dotted", "second", "unpaired"):
        if getattr(left, kind) and kind not in _said:
            _said.add(kind)
            LeftOut(**{kind: getattr(left, kind)[:1]}).warn(url)


def _label(url: str, name: str, text: str) -> int:
    """The class index a label file holds (`label_in`), or -1 for one that holds no integer: said once a
    process (shards of class names would say it at every sample), as a stream cannot be checked before the run,
    as indexed shards are (they refuse it), and one bad file should not stop it."""
    found = label_in(text)
    if found is None and "label" not in _said:
        _said.add("label")
        log.warning("%s:%s holds %r, not an integer label: read as unlabelled, as is any other such label file "
                    "(not named again)", url, name, text[:20])
    return -1 if found is None else found


class StreamShards:
    """Streamed shards as an image source: what the trainer asks of a source, without random access.
    `len` is `data.stream_size`, or where that is unknown (0) the number of first images `load` serves: it reads
    only the first images of the first shard (the reconstruction pictures), and index i is image i mod that."""

    mean, std = MEAN, STD
    num_classes = None

    def __init__(self, root: str, size: int = 0) -> None:
        self.root, self.urls, self.size = root, shard_urls(root), size
        self._first: list[tuple[str, str, bytes, int]] | None = None

    def _first_images(self) -> list[tuple[str, str, bytes, int]]:
        """The first (up to 64) images of the first shard that gives any, (shard, key, bytes, label): an empty
        shard read whole is passed over, one that cannot be read is an error (the next ones likely fail alike)."""
        for url in self.urls if self._first is None else ():
            failed: list[str] = []
            self._first = [(url, *sample) for sample in islice(read_samples(url, failed=failed), 64)]
            if self._first or failed:
                break
        if not self._first:
            raise UserError(f"the shards of data.root={self.root} gave no images (see the warnings above); check "
                            "data.root and that the shards can be read")
        return self._first

    def __len__(self) -> int:
        return self.size or len(self._first_images())

    def sample_name(self, key: int) -> str:
        """Where the streamed sample of views key `key` (shard << KEY_BITS | position) lives, for messages."""
        return f"{self.urls[key >> KEY_BITS]}, sample {key & ((1 << KEY_BITS) - 1)} (from 0)"

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        first = self._first_images()
        url, key, data, label = first[index % len(first)]
        return decode(io.BytesIO(data), f"{url}:{key}"), label


def stream_position(epoch: int = 0, given: int = 0, sizes: Sequence[int] = ()) -> tuple[int, int, tuple[int, ...]]:
    """A worker's position: (epoch, samples given out in it, sizes of the shards it finished in it)."""
    return epoch, given, tuple(sizes)


class SampleMaker(Protocol):
    """What turns a streamed file into a training sample (`repre.data.pipeline.ViewDataset`)."""

    def load_bytes(self, data: bytes, name: str, label: int) -> dict: ...

    def sample(self, loaded: dict, epoch: int, index: int, skipped: int = 0) -> dict: ...


class StreamViews(IterableDataset):
    """The endless stream of collate samples of this process's workers (see the module's description).

    `positions`: {logical worker: position} to resume from; `start_step`: the optimizer step the loader starts
    at, which renumbers the workers so that step s's batch still comes from worker s mod W."""

    def __init__(self, shards: StreamShards, views: SampleMaker, seed: int, block: int, rank: int, world: int,
                 start_step: int = 0, positions: dict[int, tuple] | None = None) -> None:
        self.shards, self.views, self.seed, self.block = shards, views, seed, block
        self.rank, self.world, self.start_step = rank, world, start_step
        self.positions = positions or {}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info else (1, 0)
        check_enough_shards(len(self.shards.urls), self.world, workers)
        logical = (physical + self.start_step) % workers
        epoch, given, sizes = self.positions.get(logical, stream_position())
        skipped = 0  # unreadable images since the last sample: counted with the next, in the next epoch if need be
        idle = 0  # epochs in a row in which this worker's shards were empty
        while True:
            gave, skipped, empty = yield from self._epoch(epoch, given, list(sizes), logical, workers, skipped)
            idle = 0 if gave or given else idle + 1
            if idle:
                urls = [self.shards.urls[i] for i in self._shards_of(epoch, logical, workers)]
                named = f"{', '.join(urls[:3])}{' ...' if len(urls) > 3 else ''}"
                if not empty:  # shards that could not be read, or images none of which decodes
                    raise UserError(f"the shards {named} gave no readable image (see the warnings above): check "
                                    "data.root and that the shards can be read")
                if idle >= len(self.shards.urls):  # as many draws as shards, each empty: a safety net
                    raise UserError(f"the shards {named} hold no image, nor did this data worker's others in {idle} "
                                    "epochs: check data.root")
                log.warning("the shards %s hold no image (epoch %d): going on with the next epoch's", named, epoch)
            epoch, given, sizes = epoch + 1, 0, []

    def _shards_of(self, epoch: int, logical: int, workers: int) -> list[int]:
        """This worker's shards in `epoch`: every stream gets as many (the shuffled list cut to a multiple of
        processes x workers; the few left over sit this epoch out), so no stream runs ahead by whole shards."""
        n = len(self.shards.urls)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch))).tolist()
        streams = self.world * workers
        return order[: n // streams * streams][self.rank :: self.world][logical::workers]

    def _read_from(self, shards: list[int], sizes: list[int], start: int,
                   failed: list[str]) -> Iterator[tuple[int, int, str, bytes, int]]:
        """(shard, position, key, bytes, label) of the worker's epoch stream from sample `start` on: shards whose
        sizes are known and that end before `start` are not read. Appends the size of each shard it finishes,
        and the url of each that could not be read whole to `failed`."""
        seen = 0
        for i, shard in enumerate(shards):
            if i < len(sizes) and seen + sizes[i] <= start:
                seen += sizes[i]
                continue
            count = 0
            for count, (key, data, label) in enumerate(read_samples(self.shards.urls[shard], failed=failed), 1):
                if seen + count > start:
                    yield shard, count - 1, key, data, label
            if i >= len(sizes):
                sizes.append(count)
            seen += count

    def _epoch(self, epoch: int, given: int, sizes: list[int], logical: int, workers: int,
               skipped: int) -> Generator[dict, None, tuple[bool, int, bool]]:
        """Yields the collate samples of this worker's epoch from position `given` on (`skipped`: unreadable
        images not yet counted); returns whether it gave any (an epoch of unreadable images gives none), the
        unreadable images after its last sample, and whether its shards were empty (read whole, no sample)."""
        shards = self._shards_of(epoch, logical, workers)
        block = given // self.block
        failed: list[str] = []
        source = self._read_from(shards, sizes, block * self.block, failed)
        gave = read = False
        while True:
            items = list(islice(source, self.block))
            read = read or bool(items)
            if not items:
                return gave, skipped, not read and not failed
            rng = np.random.default_rng([self.seed, epoch, self.rank, logical, block])
            order = rng.permutation(len(items))
            for pos in range(given - block * self.block, len(items)):
                shard, at, key, data, label = items[order[pos]]
                index = shard << KEY_BITS | at
                try:
                    loaded = self.views.load_bytes(data, f"{self.shards.urls[shard]}:{key}", label)
                except UnreadableImage as exc:
                    warn_unreadable(str(exc), "skipping unreadable image")
                    skipped += 1
                    continue
                sample = self.views.sample(loaded, epoch, index, skipped)
                skipped = 0
                sample["stream"] = (logical, *stream_position(epoch, block * self.block + pos + 1, sizes))
                gave = True
                yield sample
            block, given = block + 1, (block + 1) * self.block


def check_enough_shards(shards: int, world: int, workers: int) -> None:
    if shards < world * workers:
        raise UserError(f"{shards} shards cannot feed {world} process(es) x {workers} data worker(s), each of which "
                        "reads shards of its own: use fewer train.num_workers, fewer processes, or more shards")
