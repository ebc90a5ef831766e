"""lm.static_cache against the reference (transformers 5.23 gemma3n, full forward) and against our KVCache:
one-row slots behave like KVCache, rows at different lengths share one forward, sliding rings wrap
(window 8, sequences of 20-30 positions), crops the ring cannot honour raise, failed forwards roll back.
Tolerance: 1e-4 relative to the largest |logit|, fp32 (the parity tests' tolerance)."""
import pytest
import torch

pytest.importorskip("transformers")

from reference_models import TEXT_VOCAB, build_reference  # noqa: E402

from lm.config import TextConfig  # noqa: E402
from lm.kv_cache import KVCache  # noqa: E402
from lm.model import TextModel  # noqa: E402
from lm.static_cache import StaticCache  # noqa: E402

PREFIX = "model.language_model."
RTOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def ours_from(ref) -> TextModel:
    model = TextModel(TextConfig.from_dict(ref.config.text_config.to_dict()))
    model.load_state_dict({k[len(PREFIX):]: v for k, v in ref.state_dict().items() if k.startswith(PREFIX)})
    return model.eval()


@pytest.fixture(scope="module", params=["sharing", "matformer"])
def pair(request):
    ref = build_reference(request.param)
    return ref, ours_from(ref)


def ids_of(length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, TEXT_VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def test_config_has_what_the_tests_need(pair):
    _, ours = pair
    c = ours.config
    assert c.sliding_window == 8 and "sliding_attention" in c.layer_types and "full_attention" in c.layer_types
    cache = StaticCache(c, 2, 40)
    owners = sorted(cache.keys)
    assert owners == [i for i in range(c.num_hidden_layers) if not c.is_kv_shared(i)]
    assert all(cache.keys[i].shape[2] == (8 if c.layer_types[i] == "sliding_attention" else 40) for i in owners)


@pytest.mark.parametrize("ring_slots", [None, 11, 64])
def test_slot_prefill_and_steps_match_reference(pair, ring_slots):
    ref, ours = pair
    ids = ids_of(26, seed=1)
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        slot = StaticCache(ours.config, 3, 32, ring_slots=ring_slots).slot(2)
        steps = [ours(ids[:, :10], cache=slot)] + [ours(ids[:, i:i + 1], cache=slot) for i in range(10, 26)]
        got = torch.cat(steps, dim=1)
        kv = KVCache()
        kv_steps = torch.cat([ours(ids[:, :10], cache=kv)] + [ours(ids[:, i:i + 1], cache=kv) for i in range(10, 26)], 1)
    assert slot.length == 26
    assert rel_err(got, expected) < RTOL, f"static vs reference {rel_err(got, expected):.2e}"
    assert rel_err(got, kv_steps) < RTOL, f"static vs KVCache {rel_err(got, kv_steps):.2e}"


def test_prefill_longer_than_the_ring_attends_before_overwriting(pair):
    """One 30-token prefill into an 8-slot ring: every query still sees its 8 keys."""
    ref, ours = pair
    ids = ids_of(30, seed=2)
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        slot = StaticCache(ours.config, 1, 40).slot(0)
        got = torch.cat([ours(ids[:, :24], cache=slot), ours(ids[:, 24:27], cache=slot),
                         ours(ids[:, 27:], cache=slot)], dim=1)
    assert rel_err(got, expected) < RTOL, f"{rel_err(got, expected):.2e}"


def test_rows_at_different_lengths_share_one_forward(pair):
    """Three sequences prefilled to 5, 13 and 21 positions, then decoded together (all rows, then rows 0
    and 2 only: a non-contiguous view); each row's logits equal its own full forward."""
    ref, ours = pair
    seqs = [ids_of(n, seed=10 + n) for n in (12, 20, 28)]
    starts = (5, 13, 21)
    with torch.no_grad():
        expected = [ref(input_ids=s).logits[0] for s in seqs]
        cache = StaticCache(ours.config, 4, 32)
        rows = [3, 0, 1]  # any row order
        got = [[ours(s[:, :n], cache=cache.slot(r))[0]] for s, n, r in zip(seqs, starts, rows)]
        for step in range(4):
            view = cache.rows(rows)
            tokens = torch.cat([s[:, n + step:n + step + 1] for s, n in zip(seqs, starts)])
            out = ours(tokens, cache=view)
            for j in range(3):
                got[j].append(out[j])
        for step in range(4, 7):
            pick = [0, 2]
            tokens = torch.cat([seqs[j][:, starts[j] + step:starts[j] + step + 1] for j in pick])
            out = ours(tokens, cache=cache.rows([rows[j] for j in pick]))
            for k, j in enumerate(pick):
                got[j].append(out[k])
    assert cache.lengths == [13 + 4, 21 + 7, 0, 5 + 7]
    for j, (g, e) in enumerate(zip(got, expected)):
        g = torch.cat(g)
        assert rel_err(g, e[:g.shape[0]]) < RTOL, f"row {j}: {rel_err(g, e[:g.shape[0]]):.2e}"


def test_crop_within_what_the_ring_holds_and_beyond(pair):
    ref, ours = pair
    ids = ids_of(26, seed=3)
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        slot = StaticCache(ours.config, 1, 32).slot(0)  # ring = window = 8
        ours(ids, cache=slot)
        assert slot.restorable(25) == 25 and slot.restorable(24) == 0 and slot.restorable(99) == 26
        with pytest.raises(ValueError, match="cannot crop back to 13"):
            slot.crop(13)
        assert slot.length == 26  # a refused crop changes nothing
        slot.crop(25)
        assert rel_err(ours(ids[:, 25:], cache=slot), expected[:, 25:]) < RTOL
        slot.crop(slot.restorable(13))  # 0: recompute from the start
        assert slot.length == 0
        assert rel_err(ours(ids, cache=slot), expected) < RTOL

        wide = StaticCache(ours.config, 1, 32, ring_slots=20).slot(0)  # room to roll back 12 positions
        ours(ids, cache=wide)
        assert wide.restorable(13) == 13 and wide.restorable(12) == 0
        wide.crop(13)
        assert rel_err(ours(ids[:, 13:], cache=wide), expected[:, 13:]) < RTOL


class Boom(RuntimeError):
    pass


def fail_in_layer(model: TextModel, layer: int):
    """Make `layer` raise after the layers before it have written their keys."""
    original = model.layers[layer].forward

    def forward(*a, **k):
        raise Boom("injected")

    model.layers[layer].forward = forward
    return lambda: setattr(model.layers[layer], "forward", original)


def test_failed_forward_rolls_back(pair):
    ref, ours = pair
    ids = ids_of(24, seed=4)
    last = ours.config.num_hidden_layers - 1
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        cache = StaticCache(ours.config, 2, 40)
        a, b = cache.slot(0), cache.slot(1)
        ours(ids[:, :20], cache=a)
        ours(ids[:, :20], cache=b)
        restore = fail_in_layer(ours, last)
        try:
            with pytest.raises(Boom):  # a decode step over both rows
                ours(torch.cat([ids[:, 20:21]] * 2), cache=cache.rows([0, 1]))
            with pytest.raises(Boom):  # a 4-token chunk on row 1: it overwrote ring keys 20 needs
                ours(ids[:, 20:24], cache=b)
        finally:
            restore()
        assert a.length == 20, "one overwritten ring entry: row 0 still holds what position 20 needs"
        assert b.length == 0, "row 1 lost keys position 20 needs: emptied, not left attending wrongly"
        assert not cache._in_flight
        assert rel_err(ours(ids[:, 20:], cache=a), expected[:, 20:]) < RTOL
        assert rel_err(ours(ids, cache=b), expected) < RTOL


def test_limits_and_misuse_are_clear_errors():
    from test_lm_model import tiny_model

    model = tiny_model()
    cache = StaticCache(model.config, 2, 8)
    ids = torch.arange(5, 15)[None]
    with pytest.raises(ValueError, match="would hold 10 positions.*max_len=8"):
        model(ids, cache=cache.slot(0))
    assert cache.lengths == [0, 0]
    view = cache.rows([0, 1])
    view.begin(1)
    with pytest.raises(RuntimeError, match="already in another forward"):
        cache.slot(1).begin(1)
    view.crop(view.lengths)
    with pytest.raises(ValueError, match="distinct"):
        cache.rows([1, 1])
    with pytest.raises(ValueError, match="ring_slots"):
        StaticCache(model.config, 1, 8, ring_slots=2)
    with pytest.raises(ValueError, match="lengths"):
        view.length


def test_allocate_and_release_slots():
    from test_lm_model import tiny_model

    model = tiny_model()
    cache = StaticCache(model.config, 2, 16)
    a, b = cache.allocate(), cache.allocate()
    assert {a.row_ids[0], b.row_ids[0]} == {0, 1} and cache.allocate() is None
    with torch.no_grad():
        model(torch.arange(3, 9)[None], cache=a)
    assert a.length == 6
    a.release()
    a.release()  # once only
    c = cache.allocate()
    assert c.row_ids == a.row_ids and c.length == 0 and cache.free_rows == 0
