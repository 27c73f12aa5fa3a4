"""WebDataset tar shards (data.name=shards): indexing, decoding, labels, splits, bad input, a run."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import add, last_json, png_bytes, pretrain_args, run_cli, write_shards
from repre.config import DataConfig
from repre.data.shards import TarShards, expand
from repre.data.sources import build_source, load_or_replace
from repre.errors import UserError


def test_brace_patterns_expand_with_their_padding():
    assert expand("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand("x{1..2}-{0..1}.tar") == ["x1-0.tar", "x1-1.tar", "x2-0.tar", "x2-1.tar"]
    assert expand("plain.tar") == ["plain.tar"]
    # as bash: counted down, and padded where an end has a leading zero
    assert expand("a-{03..01}.tar") == ["a-03.tar", "a-02.tar", "a-01.tar"]
    assert expand("a-{10..8}") == ["a-10", "a-9", "a-8"] and expand("a-{8..010}") == ["a-008", "a-009", "a-010"]
    # lists and steps, which bash and WebDataset expand, were read as file names
    assert expand("s-{000,002}.tar") == ["s-000.tar", "s-002.tar"]
    assert expand("s-{00..04..2}.tar") == ["s-00.tar", "s-02.tar", "s-04.tar"]
    with pytest.raises(UserError, match="braces do not pair up"):
        expand("s-{00..04.tar")


def test_a_glob_is_said_to_be_no_pattern_repre_expands(tmp_path):
    write_shards(tmp_path, shards=2, per_shard=2)
    with pytest.raises(UserError, match=r"not \*: give the folder of the shards or a brace pattern"):
        TarShards(str(tmp_path / "part-*.tar"))
    assert len(TarShards(str(tmp_path / "part-{0000,0001}.tar"))) == 4


def test_a_shard_folder_leaves_hidden_files_out_and_reads_tar_in_any_case(tmp_path):
    """A copy in .Trash/ was read as more images, macOS's ._x.tar refused as damaged, B.TAR left out: the rules
    of image folders now."""
    import shutil

    write_shards(tmp_path, shards=2, per_shard=3)
    (tmp_path / ".Trash").mkdir()
    shutil.copy(tmp_path / "part-0000.tar", tmp_path / ".Trash" / "part-0000.tar")
    (tmp_path / "._part-0000.tar").write_bytes(b"\0\5\26\7" + b"\1" * 600)  # AppleDouble metadata
    (tmp_path / "part-0001.tar").rename(tmp_path / "PART-0001.TAR")
    (tmp_path / "again").symlink_to(".")  # a link back to the folder: its shards read once (a loop read 82)
    source = TarShards(str(tmp_path))
    assert len(source) == 6 and [p.name for p in source.paths] == ["PART-0001.TAR", "part-0000.tar"]
    # the guard against training on held-out shards sees what training reads, by the same rules
    shutil.copy(tmp_path / "part-0000.tar", tmp_path / ".Trash" / "val-0000.tar")
    assert len(build_source(DataConfig(name="shards", root=str(tmp_path)), "train")) == 6
    shutil.copy(tmp_path / "part-0000.tar", tmp_path / "VAL-0000.TAR")
    with pytest.raises(UserError, match="holds VAL-0000.TAR beside the training shards"):
        build_source(DataConfig(name="shards", root=str(tmp_path)), "train")


def test_an_empty_file_as_a_shard_is_named_so(tmp_path):
    """A shard of 0 bytes (a copy that failed) was "not an uncompressed tar file", as if compressed."""
    write_shards(tmp_path, shards=1, per_shard=2)
    (tmp_path / "part-0001.tar").write_bytes(b"")
    with pytest.raises(UserError, match=r"part-0001.tar is empty \(0 bytes\): a copy that failed; copy it again"):
        TarShards(str(tmp_path))


def test_member_names_that_are_not_utf8_are_indexed_and_named(tmp_path):
    """tarfile reads such a name with surrogates, which the index's strict encoding refused: a traceback."""
    with tarfile.open(tmp_path / "latin.tar", "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        for i in range(2):
            add(tar, f"caf\xe9{i}.png", png_bytes(i))
            add(tar, f"caf\xe9{i}.cls", b"1")
    source = TarShards(str(tmp_path / "latin.tar"))
    assert len(source) == 2 and source.load(1)[1] == 1
    assert source.path(0).endswith(":caf\udce90")  # as image folders name such a file: surrogateescape


def test_shards_index_every_image_with_its_label_and_decode_it(tmp_path):
    seeds = write_shards(tmp_path / "train", shards=3, per_shard=5)
    source = TarShards(str(tmp_path / "train"))
    assert len(source) == 15 and source.num_classes == 3
    for i in (0, 7, 14):
        img, label = source.load(i)
        want = torch.from_numpy(np.array(Image.open(io.BytesIO(png_bytes(seeds[i]))))).permute(2, 0, 1)
        assert torch.equal(img, want) and label == seeds[i] % 3
    pattern = TarShards(str(tmp_path / "train" / "part-{0001..0002}.tar"))
    assert len(pattern) == 10 and torch.equal(pattern.load(0)[0], source.load(5)[0])


def test_splits_follow_the_folder_rule(tmp_path):
    write_shards(tmp_path / "train", shards=2, per_shard=4)
    write_shards(tmp_path / "val", shards=1, per_shard=3, start=100)
    cfg = DataConfig(name="shards", root=str(tmp_path))
    assert len(build_source(cfg, "train")) == 8 and len(build_source(cfg, "test")) == 3
    with pytest.raises(UserError, match=r"is a shard or a pattern, without a held-out split: .* --set eval.split=val"):
        build_source(DataConfig(name="shards", root=str(tmp_path / "train" / "part-0000.tar")), "test")
    with pytest.raises(UserError, match=r"is a training split itself: point data.root at "):  # train/ beside val/
        build_source(DataConfig(name="shards", root=str(tmp_path / "train")), "test")
    write_shards(tmp_path / "alone", shards=1, per_shard=4)
    with pytest.raises(UserError, match=r"no val/ \(or test/\) shards: .* read labelled shards from"):
        build_source(DataConfig(name="shards", root=str(tmp_path / "alone")), "test")  # no folder layout named


def test_held_out_shards_beside_the_training_ones_are_not_trained_on(tmp_path):
    """train-*.tar and val-*.tar in one folder: every .tar of a folder root is trained on, the val shards too;
    refused, naming the layout (train/ and val/) or a pattern of the training shards."""
    write_shards(tmp_path, shards=2, per_shard=4)
    (tmp_path / "part-0001.tar").rename(tmp_path / "val-0000.tar")
    with pytest.raises(UserError, match=r"holds val-0000.tar beside the training shards.*/train/ and .*/val/"):
        build_source(DataConfig(name="shards", root=str(tmp_path)), "train")
    (tmp_path / "more").mkdir()  # a split named inside the name, in a sub-folder (read too)
    (tmp_path / "val-0000.tar").rename(tmp_path / "more" / "in1k-validation-00.tar")
    with pytest.raises(UserError, match=r"holds in1k-validation-00.tar beside"):
        build_source(DataConfig(name="shards", root=str(tmp_path)), "train")
    assert len(build_source(DataConfig(name="shards", root=str(tmp_path / "part-{0000..0000}.tar")), "train")) == 4


def test_unlabelled_shards_and_a_corrupt_image(tmp_path, repre_log):
    write_shards(tmp_path, shards=1, per_shard=3, labels=False)
    with tarfile.open(tmp_path / "part-0001.tar", "w") as tar:
        add(tar, "broken.jpg", b"not a jpeg at all")
    source = TarShards(str(tmp_path))
    assert source.num_classes is None and source.labels.tolist() == [-1] * 4
    img, label, skipped = load_or_replace(source, 3)  # the broken one: replaced by another
    assert skipped == 1 and any(torch.equal(img, source.load(i)[0]) for i in range(3))
    assert "part-0001.tar:broken" in repre_log.text


def test_bad_shard_roots_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="no .tar shards"):
        TarShards(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        TarShards(str(tmp_path / "x-{00..01}.tar"))
    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "a.tar.gz", "w:gz") as tar:
        add(tar, "a.png", png_bytes(0))
    with pytest.raises(UserError, match="uncompressed"):
        TarShards(str(tmp_path / "gz"))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "a.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)
    with pytest.raises(UserError, match="not an uncompressed tar"):
        TarShards(str(tmp_path / "fake"))
    with tarfile.open(tmp_path / "bad-label.tar", "w") as tar:
        add(tar, "a.png", png_bytes(0))
        add(tar, "a.cls", b"cat")
    with pytest.raises(UserError, match=r"a.cls holds 'cat', not an integer label: a .cls member holds the class "
                                        r"index .*; write the indices .*, or leave out every .cls"):
        TarShards(str(tmp_path / "bad-label.tar"))
    # int() reads the first three; "--3" neither: refused alike, as a stream reads them (`label_in`)
    for i, text in enumerate(("+3", "3_0", "\u0663", "--3")):
        with tarfile.open(tmp_path / f"odd-label-{i}.tar", "w") as tar:
            add(tar, "a.png", png_bytes(0))
            add(tar, "a.cls", text.encode())
        with pytest.raises(UserError, match="not an integer label"):
            TarShards(str(tmp_path / f"odd-label-{i}.tar"))


def test_pretrain_and_knn_on_shards_with_workers(tmp_path):
    write_shards(tmp_path / "data" / "train", shards=3, per_shard=12, classes=2)
    write_shards(tmp_path / "data" / "val", shards=1, per_shard=8, classes=2, start=500)
    code, stdout = run_cli(pretrain_args(tmp_path / "run", "data.name=shards", f"data.root={tmp_path / 'data'}",
                                         "train.num_workers=2", "train.max_steps=3", "data.image_size=16"))
    summary = last_json(stdout)
    assert code == 0 and summary["completed"] and summary["knn_top1"] is not None


def test_few_files_stay_open_and_a_shrunk_shard_is_an_unreadable_image(tmp_path, monkeypatch):
    from repre.data import shards

    monkeypatch.setattr(shards, "OPEN_FILES", 2)
    write_shards(tmp_path, shards=5, per_shard=2)
    source = TarShards(str(tmp_path))
    first = [source.load(i)[0] for i in range(10)]
    assert len(source._handles) == 2
    assert all(torch.equal(source.load(i)[0], first[i]) for i in (9, 0, 5))  # reopened after eviction
    shard = tmp_path / "part-0004.tar"
    shard.write_bytes(shard.read_bytes()[:700])  # cut inside its first image, after indexing
    img, _, skipped = load_or_replace(source, 8)  # replaced by a readable one (the shard's 2 are not)
    assert skipped >= 1 and any(torch.equal(img, first[i]) for i in range(8))


def test_the_index_is_cached_and_rebuilt_when_a_shard_changes(tmp_path, monkeypatch):
    import os

    from repre.data import shards

    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    write_shards(tmp_path / "d", shards=2, per_shard=3)
    first = TarShards(str(tmp_path / "d"))
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.npz"))) == 1

    def no_scan(*args):
        raise AssertionError("scanned again")

    monkeypatch.setattr(shards, "build_index", no_scan)
    again = TarShards(str(tmp_path / "d"))
    assert (again.entries == first.entries).all() and again.labels.tolist() == first.labels.tolist()
    assert torch.equal(again.load(4)[0], first.load(4)[0])
    shard = tmp_path / "d" / "part-0001.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # rewritten: index anew
    with pytest.raises(AssertionError, match="scanned again"):
        TarShards(str(tmp_path / "d"))


def test_members_with_more_dots_than_webdataset_keys_allow_are_said_to_be_left_out(tmp_path, monkeypatch, repre_log):
    """frame.000001.jpg is field "000001.jpg" of sample "frame" by WebDataset's rule, no image: left out
    silently before (a shard of such names 'held no images' though every member ended in .jpg)."""
    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for name in ("frame.000001.jpg", "IMG_1.edited.png", "plain.png"):
            add(tar, name, png_bytes(0))
    assert len(TarShards(str(tmp_path / "s-000.tar"))) == 1
    assert "2 member(s) of the shards" in repre_log.text and "frame.000001.jpg" in repre_log.text


def test_a_sample_with_two_images_reads_its_first_indexed_and_streamed(tmp_path, monkeypatch, repre_log):
    """KEY.jpg and KEY.png in a row are one sample to a stream (WebDataset's grouping by key): the index counted
    two images, the stream read the last one, so the same shards gave other datasets. A key that comes back
    later is another sample with its own label (the index kept one label a key: the shard's last)."""
    from repre.data.stream import read_samples

    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for name, seed in (("a.png", 1), ("a.cls", "1"), ("a.jpg", 2), ("b.png", 3), ("b.cls", "2"), ("a.png", 4),
                           ("a.cls", "3")):
            add(tar, name, seed.encode() if isinstance(seed, str) else png_bytes(seed))
    indexed = TarShards(str(tmp_path / "s-000.tar"))
    assert len(indexed) == 3 and "1 member(s) of the shards" in repre_log.text and "a.jpg" in repre_log.text
    streamed = list(read_samples(str(tmp_path / "s-000.tar")))
    assert [key for key, _, _ in streamed] == ["a", "b", "a"]  # the last "a" comes after "b": a sample of its own
    assert [image for _, image, _ in streamed] == [png_bytes(1), png_bytes(3), png_bytes(4)]
    assert [label for _, _, label in streamed] == [1, 2, 3]
    for i, (_, image, label) in enumerate(streamed):
        want = torch.from_numpy(np.array(Image.open(io.BytesIO(image)))).permute(2, 0, 1)
        assert torch.equal(indexed.load(i)[0], want) and indexed.load(i)[1] == label


def test_a_shard_cut_short_says_so(tmp_path, monkeypatch):
    """A copy that stopped mid-member was called "not an uncompressed tar file"."""
    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for i in range(3):
            add(tar, f"k{i}.png", png_bytes(i, size=64))
    whole = (tmp_path / "s-000.tar").read_bytes()
    (tmp_path / "s-000.tar").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError, match="is cut short; copy it again"):
        TarShards(str(tmp_path / "s-000.tar"))


def test_a_damaged_member_header_is_refused_not_read_as_the_shard_s_end(tmp_path, monkeypatch):
    """tarfile stops quietly at a header whose checksum fails: the members after it were left out unsaid."""
    from repre.data.stream import read_samples

    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for i in range(6):
            add(tar, f"k{i}.png", png_bytes(i, size=16))
    whole = bytearray((tmp_path / "s-000.tar").read_bytes())
    at = [m.offset for m in tarfile.open(tmp_path / "s-000.tar").getmembers()][4]
    whole[at + 148:at + 156] = b"99999999"  # the fifth member's header checksum
    (tmp_path / "s-000.tar").write_bytes(bytes(whole))
    with pytest.raises(UserError, match=f"has a damaged member header at byte {at:,}, after 4 images"):
        TarShards(str(tmp_path / "s-000.tar"))
    assert [key for key, _, _ in read_samples(f"pipe:cat {tmp_path / 's-000.tar'}")] == ["k0", "k1", "k2", "k3"]
    for cut in (at, at + 100):  # cut at a member's header, and inside it: no end-of-archive block
        (tmp_path / "s-000.tar").write_bytes(bytes(whole[:cut]))
        with pytest.raises(UserError, match=f"is cut short .no end-of-archive block. at byte {at:,}, after 4"):
            TarShards(str(tmp_path / "s-000.tar"))
        for url in (str(tmp_path / "s-000.tar"), f"pipe:cat {tmp_path / 's-000.tar'}"):
            assert [key for key, _, _ in read_samples(url)] == ["k0", "k1", "k2", "k3"]


def test_labels_written_after_every_image_are_said_and_the_images_read_unlabelled(tmp_path, monkeypatch, repre_log):
    """`tar cf s.tar *.png *.cls` puts each label out of its key's row: a label-only sample each, left out
    without a word, and the shards then read as unlabelled (blamed on a missing KEY.cls)."""
    from repre.data.stream import read_samples

    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for i in range(3):
            add(tar, f"k{i}.png", png_bytes(i))
        for i in range(3):
            add(tar, f"k{i}.cls", str(i).encode())
    for _ in range(2):  # indexed, then from the cached index: said each time (the cache kept it silent)
        shards = TarShards(str(tmp_path / "s-000.tar"))
        assert len(shards) == 3 and shards.num_classes is None
    said = [r.getMessage() for r in repre_log.records if "have no image of their key" in r.getMessage()]
    assert len(said) == 2 and all(m.startswith("3 label member(s)") and "(k0.cls)" in m for m in said)
    assert "--sort=name -C FOLDER ." in said[0]
    assert [(key, label) for key, _, label in read_samples(str(tmp_path / "s-000.tar"))] == [("k0", -1), ("k1", -1),
                                                                                           ("k2", -1)]
    said = [r.getMessage() for r in repre_log.records if "have no image of their key" in r.getMessage()]
    assert len(said) == 3 and said[2].startswith("1 label member(s)")  # a stream: the first, once a process


def test_two_archives_joined_end_to_end_are_said_to_be_so_not_a_damaged_shard(tmp_path, monkeypatch, repre_log):
    """`cat a.tar b.tar > c.tar`: tar and WebDataset read the first archive alone; "damaged, copy it again"
    sent the user after a copy that could not help."""
    from repre.data.stream import read_samples

    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    for name, start in (("a.tar", 0), ("b.tar", 3)):
        with tarfile.open(tmp_path / name, "w") as tar:
            for i in range(start, start + 3):
                add(tar, f"k{i}.png", png_bytes(i))
    (tmp_path / "c.tar").write_bytes((tmp_path / "a.tar").read_bytes() + (tmp_path / "b.tar").read_bytes())
    with tarfile.open(tmp_path / "a.tar") as tar:
        end = tar.getmembers() and tar.offset  # the first archive's end-of-archive block
    with pytest.raises(UserError, match=f"joined end to end .* at byte {end:,}, after 3 images: .*tar -Af"):
        TarShards(str(tmp_path / "c.tar"))
    for url in (str(tmp_path / "c.tar"), f"pipe:cat {tmp_path / 'c.tar'}"):
        assert [key for key, _, _ in read_samples(url)] == ["k0", "k1", "k2"]
        assert "joined end to end" in repre_log.records[-1].getMessage()
        assert "copy it again" not in repre_log.records[-1].getMessage()
    # a damaged header whose member holds no data: the stream reads past it to the next member's header, which
    # is no second archive (no end-of-archive block before it)
    with tarfile.open(tmp_path / "d.tar", "w") as tar:
        for i in range(3):
            add(tar, f"k{i}.png", png_bytes(i))
            add(tar, f"k{i}.txt", b"")
    raw = bytearray((tmp_path / "d.tar").read_bytes())
    at = tarfile.open(tmp_path / "d.tar").getmember("k1.txt").offset
    raw[at + 148:at + 156] = b"99999999"
    (tmp_path / "d.tar").write_bytes(bytes(raw))
    for url in (str(tmp_path / "d.tar"), f"pipe:cat {tmp_path / 'd.tar'}"):
        assert [key for key, _, _ in read_samples(url)] == ["k0", "k1"]
        assert "has a damaged member header" in repre_log.records[-1].getMessage()


def test_a_shard_cut_in_a_member_counts_the_whole_images_before_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for i in range(4):
            add(tar, f"k{i}.png", png_bytes(i, size=64))
    member = tarfile.open(tmp_path / "s-000.tar").getmembers()[2]
    whole = (tmp_path / "s-000.tar").read_bytes()
    (tmp_path / "s-000.tar").write_bytes(whole[:member.offset_data + member.size // 2])  # inside k2's data
    with pytest.raises(UserError, match="after 2 images: it is cut short"):
        TarShards(str(tmp_path / "s-000.tar"))


def test_a_class_id_where_an_index_was_meant_reads_unlabelled_naming_its_sample(tmp_path, monkeypatch, repre_log):
    """One KEY.cls holding a WordNet number made 1,440,765 classes, and the k-NN's tables asked for terabytes,
    blamed on the memory. Pre-training needs no labels: the shards read as unlabelled, the sample named."""
    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for i, label in enumerate(["0", "1", "1440764", "2"]):
            add(tar, f"k{i}.png", png_bytes(i))
            add(tar, f"k{i}.cls", label.encode())
    shards = TarShards(str(tmp_path / "s-000.tar"))
    assert shards.num_classes is None and shards.labels.tolist() == [-1] * 4
    assert "s-000.tar:k2 has label 1,440,764, though the shards in" in repre_log.text
    with tarfile.open(tmp_path / "t-000.tar", "w") as tar:  # indices of a larger set (ImageNet-21k's): as they are
        for i in range(110):
            add(tar, f"k{i}.png", png_bytes(0, size=4))
            add(tar, f"k{i}.cls", str(i * 200).encode())
    assert TarShards(str(tmp_path / "t-000.tar")).num_classes == 21801


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_index_cache_is_indexed_again(tmp_path, monkeypatch, damage):
    """A cache file cut short (a crash after its rename) raised EOFError or BadZipFile in every later run."""
    from repre.data.shards import index_cache, shard_paths

    monkeypatch.setenv("REPRE_CACHE", str(tmp_path / "cache"))
    write_shards(tmp_path / "d", shards=2, per_shard=4)
    first = TarShards(str(tmp_path / "d"))
    cache = index_cache(shard_paths(str(tmp_path / "d")))
    cache.write_bytes(b"" if damage == "empty" else cache.read_bytes()[:100])
    again = TarShards(str(tmp_path / "d"))
    assert (again.entries == first.entries).all() and again.labels.tolist() == first.labels.tolist()
    assert cache.stat().st_size > 100  # written again whole
