"""The packed loader on a real `test` data dir: packing, images, determinism, resume, ranks."""

import json

import pytest
import torch

from opengpt4.config import get_preset
from opengpt4.data.build import build
from opengpt4.data.loader import DataLoader
from opengpt4.errors import ConfigError
from opengpt4.model.transformer import IGNORE_INDEX
from opengpt4.tokenizer import Tokenizer

VISION = get_preset("test").vision
K = VISION.tokens_per_image
MIXED = {"world": 1.0, "stdlib": 1.0, "math": 0.5, "images": 1.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build("test", tmp_path_factory.mktemp("loader") / "data", seed=0)


@pytest.fixture(scope="module")
def tok(data):
    return Tokenizer.from_dir(data, json.loads((data / "index.json").read_text())["tokenizer"])


@pytest.fixture
def make(data, tok):
    def make(weights=None, **kw):
        args = {"split": "train", "seq_len": 48, "batch_size": 8, "weights": weights or MIXED,
                "vision": VISION, "image_token_id": tok.image_id} | kw
        return DataLoader(data, **args)
    return make


def assert_same(a, b):
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets) and a.domains == b.domains
    assert (a.images is None) == (b.images is None)
    assert a.images is None or torch.equal(a.images, b.images)


def test_text_rows_are_shifted_short_documents_whole_long_ones_everywhere(make, tok):
    loader = make({"world": 1, "stdlib": 1}, vision=None, image_token_id=None)
    [batch] = loader.next()
    assert batch.input_ids.shape == batch.targets.shape == (8, 48)
    assert batch.input_ids.dtype == batch.targets.dtype == torch.long
    assert batch.images is None and set(batch.domains) <= {"world", "stdlib"}
    assert torch.equal(batch.targets[:, :-1], batch.input_ids[:, 1:])
    assert loader.tokens_per_step == 8 * 48
    # Over many rows: a row starts at a BOS exactly when its document fits in a row, and rows of
    # long documents (stdlib files) start all over them, not only at their first tokens.
    starts_at_bos, mid_document = 0, 0
    for _ in range(30):
        for row in loader.next()[0].input_ids:
            if row[0] == tok.bos_id:
                starts_at_bos += 1
            else:
                mid_document += 1
    assert starts_at_bos > 0 and mid_document > 0


def test_image_rows_start_with_bos_and_placeholders_and_never_score_them(make, tok):
    [batch] = make({"images": 1}, seq_len=64).next()
    placeholders = batch.input_ids == tok.image_id
    assert batch.images.shape == (int(placeholders.sum()) // K, 3, 32, 32) and batch.images.shape[0] >= 8
    # Placeholders as targets carry no loss (the position before each one, shifted by one).
    assert (batch.targets[:, :-1][placeholders[:, 1:]] == IGNORE_INDEX).all()
    assert not (batch.targets == tok.image_id).any()
    assert (batch.input_ids[:, 0] == tok.bos_id).all() and (batch.input_ids[:, 1 : 1 + K] == tok.image_id).all()
    # Everything the loss sees is the next input token; the rest is placeholders or padding.
    kept = batch.targets[:, :-1] != IGNORE_INDEX
    assert torch.equal(batch.targets[:, :-1][kept], batch.input_ids[:, 1:][kept])
    padding = batch.input_ids == tok.pad_id
    assert (batch.targets[padding] == IGNORE_INDEX).all()
    assert batch.images.min() >= -1 and batch.images.max() <= 1  # normalised with mean = std = 0.5


def test_same_seed_same_batches_other_seed_differs(make):
    a, b, c = make(), make(), make(seed=1)
    for _ in range(3):
        [x], [y], [z] = a.next(), b.next(), c.next()
        assert_same(x, y)
    assert not torch.equal(x.input_ids, z.input_ids)


def test_resume_continues_at_the_next_batch(make):
    run = make()
    for _ in range(5):
        run.next()
    state = json.loads(json.dumps(run.state_dict()))  # it goes into trainer_state.json
    resumed = make()
    resumed.load_state_dict(state)
    assert_same(resumed.next()[0], run.next()[0])
    with pytest.raises(ConfigError, match="seed"):
        make(seed=3).load_state_dict(state)


def test_ranks_and_micro_batches_split_the_same_global_batch(make):
    whole = make()
    accumulate = make(micro_batches=2)
    ranks = [make(rank=r, world_size=2) for r in range(2)]
    ranks_accumulate = [make(rank=r, world_size=2, micro_batches=2) for r in range(2)]
    for _ in range(2):
        [full] = whole.next()
        micro = accumulate.next()
        per_rank = [r.next()[0] for r in ranks]
        quarters = [m for r in ranks_accumulate for m in r.next()]
        for a, b in zip(micro, per_rank, strict=True):
            assert_same(a, b)
        assert torch.equal(torch.cat([q.input_ids for q in quarters]), full.input_ids)
        assert [d for q in quarters for d in q.domains] == full.domains
        assert torch.equal(torch.cat([m.images for m in micro if m.images is not None]), full.images)


def test_domain_weights_are_respected(make):
    loader = make({"world": 3, "stdlib": 1, "qa": 0}, batch_size=20, seq_len=8, vision=None, image_token_id=None)
    domains = [d for _ in range(10) for d in loader.next()[0].domains]
    assert len(domains) == 200 and "qa" not in domains
    assert 0.65 < domains.count("world") / 200 < 0.85


def test_eval_batches_are_the_same_whatever_the_seed_or_training_position(make):
    a, b = make(), make(seed=5)
    a.next()
    for domain in ("stdlib", "images"):
        x, y = a.eval_batches(domain, 2, 4), b.eval_batches(domain, 2, 4)
        assert len(x) == 2 and x[0].input_ids.shape == (4, 48) and x[0].domains == [domain] * 4
        for p, q in zip(x, y, strict=True):
            assert_same(p, q)
    assert a.eval_batches("images", 1, 4)[0].images is not None


def test_unknown_domains_missing_vision_and_indivisible_batches_are_rejected(make):
    with pytest.raises(ConfigError, match="wikipedia"):
        make({"world": 1, "wikipedia": 1})
    with pytest.raises(ConfigError, match="vision"):
        make({"images": 1}, vision=None)
    with pytest.raises(ValueError, match="batch_size 6"):
        make(batch_size=6, world_size=4)
    with pytest.raises(ConfigError, match="wikipedia"):
        make().eval_batches("wikipedia", 1, 1)
