"""Integration test on the real SIB-200, UDHR and FewRel copies (every file checked against its
SHA-256 and parsed; the shipped splits built into task sources).

The data is looked up under ``$METAPHI_DATA`` or at ``<workspace>/shared/data`` (beside the
repository). Missing data is a failure, not a skip: this test is the evidence that
the loaders work on the real datasets.
"""
from __future__ import annotations

import numpy as np
import torch

from metaphi.data.fewrel import FewRelOptions, fewrel_splits
from metaphi.data.sib200 import SIB200Options, read_sib200, sib200_splits
from metaphi.data.udhr import UDHROptions, udhr_splits
from metaphi.tasks import sample_tasks

from helpers import shared_data

DATA = shared_data("sib200").parent  # the folder holding sib200/, udhr2/ and fewrel/


def test_real_text_datasets():
    for name in ("sib200", "udhr2", "fewrel"):
        assert shared_data(name).is_dir(), (
            f"real {name} data not found at {shared_data(name)}: set METAPHI_DATA to the data "
            "folder holding sib200/, udhr2/ and fewrel/ (or fetch them with `metaphi data "
            f"{name.rstrip('2')} --download`)")
    rows = read_sib200(DATA)  # all 615 files, each against its SHA-256
    assert len({lang for lang, _ in rows}) == 205 and len(rows[("eng_Latn", "train")]) == 701
    # the same sentence ids in every language (the data is parallel)
    assert ({i for i, _, _ in rows[("fra_Latn", "test")]} ==
            {i for i, _, _ in rows[("tha_Thai", "test")]})

    sib = sib200_splits(SIB200Options(data_dir=str(DATA), k_shot=5))
    test = sample_tasks(sib.test, 0, "test", 0, 40)
    assert {t.meta["seen_script"] for t in test} == {True, False}
    train_langs = {t.meta["domain"] for t in sample_tasks(sib.train, 0, "train", 0, 40)}
    assert not train_langs & {t.meta["domain"] for t in test}
    t = test[0]
    assert t.support_x.shape == (35, t.support_x.shape[1]) and t.query_x.shape[0] == 70
    assert t.support_x.dtype == torch.long and int(t.support_x.max()) <= 256

    lid = udhr_splits(UDHROptions(data_dir=str(DATA), k_shot=1))
    task = lid.test.sample(np.random.default_rng(0))
    assert task.support_x.shape[0] == 20 and len(set(task.meta["classes"])) == 20

    rel = fewrel_splits(FewRelOptions(data_dir=str(DATA), k_shot=5))
    task = rel.test.sample(np.random.default_rng(0))
    assert task.meta["domain"] == "pubmed" and task.support_x.shape[0] == 25
    assert (task.support_x == 257).any(dim=1).all()  # every sentence marks its head entity
