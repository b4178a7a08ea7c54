"""Damaged stores (issue 8): a chunk failing its checksum, found before training or only while
training, is one line, or skipped when told."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_error
from reliability import toml, train_args
from store_helpers import corrupt_chunk

from uniskel.cli import uni
from uniskel.stores.reader import open_store


def test_train_refuses_a_damaged_store_or_skips_what_it_is_told(stage_two, tmp_path):
    spec, ds, stores = stage_two
    damaged = tmp_path / "stores"
    shutil.copytree(stores, damaged)
    store = damaged / "t__coco.h5"
    row = 5
    corrupt_chunk(store, row)
    iid = int(open_store(store).instance_ids[row])
    cfg = toml(tmp_path / "c.toml", "val-fraction = 0.0\n")
    run = tmp_path / "refused"
    one_line_error(CliRunner().invoke(uni, train_args(spec, damaged, run, cfg)),
                   str(store), f"instance {iid} (row {row})", "checksum", "--skip-corrupt")
    assert not run.exists()  # refused before anything was written
    # Told to skip: a whole epoch runs, so the damaged instance (whose read would raise
    # mid-training) was never drawn.
    res = CliRunner().invoke(uni, train_args(spec, damaged, tmp_path / "skip", cfg)
                             + ["--skip-corrupt"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("skipping 1 training instances whose cached targets are "
                            "damaged") == 1 and f"instance {iid}" in res.stderr
    ckpt = torch.load(tmp_path / "skip/last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3  # ⌈9 / 4⌉


@pytest.mark.parametrize("workers", ["0", "1"])
def test_train_chunk_damaged_after_its_check_is_one_line_or_skipped(stage_two, tmp_path,
                                                                   workers):
    """A store checked clean, then damaged without its size or mtime changing (bit rot): the
    next start trusts its record, so the damage is met while training — one line, even when a
    DataLoader worker meets it, or with --skip-corrupt the sample skipped and counted."""
    spec, _, stores = stage_two
    rotten = tmp_path / "stores"
    shutil.copytree(stores, rotten)
    store, row = rotten / "t__coco.h5", 5
    assert open_store(store).check().rows_read == 10  # a copy: read whole, then recorded
    assert open_store(store).check().rows_read == 0  # the record vouches for every row
    st = store.stat()
    corrupt_chunk(store, row)
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns))
    iid = int(open_store(store).instance_ids[row])
    cfg = toml(tmp_path / "c.toml", "val-fraction = 0.0\n")
    args = train_args(spec, rotten, tmp_path / "refused", cfg) + ["--workers", workers]
    one_line_error(CliRunner().invoke(uni, args), str(store), f"instance {iid} (row {row})",
                   "checksum", "found while training; --skip-corrupt trains without it")
    args = train_args(spec, rotten, tmp_path / "skip", cfg) + ["--workers", workers]
    res = CliRunner().invoke(uni, args + ["--skip-corrupt"])
    assert res.exit_code == 0, res.output
    assert f"uni: skipped 1 unreadable samples; first: {store}: heatmaps of instance {iid}" in (
        res.stderr)
    assert torch.load(tmp_path / "skip/last.pt", weights_only=True)["step"] == 3

