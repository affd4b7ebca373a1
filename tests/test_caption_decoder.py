"""The caption tokenizer (CLIP's BPE as a captioning vocabulary) and the causal caption decoder, on tiny models."""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot.modeling.caption_decoder import CaptionDecoder, KVCache, apply_rotary, rotary_tables
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.modeling.caption_vocabulary import UNK_TEXT

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

CAPTIONS = [
    "a red car",
    "two dogs playing in the snow",
    "a man holding a black umbrella",
    "cat",
    "a wooden table with four chairs and a lamp",
]
CONDITION_DIM = 16
TINY = {"width": 32, "depth": 2, "num_heads": 4, "mlp_dim": 64, "dropout": 0.0, "max_length": 12}


@pytest.fixture(scope="module")
def shortlist() -> CaptionTokenizer:
    return CaptionTokenizer.from_corpus(CAPTIONS)


@pytest.fixture(scope="module")
def full() -> CaptionTokenizer:
    return CaptionTokenizer()


@pytest.fixture(scope="module")
def conditions() -> torch.Tensor:
    return torch.randn(len(CAPTIONS), CONDITION_DIM, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def random_decoder(shortlist) -> CaptionDecoder:
    torch.manual_seed(2)
    return CaptionDecoder(vocab_size=shortlist.vocab_size, condition_dim=CONDITION_DIM, **TINY).eval()


@pytest.fixture(scope="module")
def trained(shortlist, conditions) -> CaptionDecoder:
    """A decoder that has memorised CAPTIONS, one per condition vector."""
    torch.manual_seed(3)
    decoder = CaptionDecoder(vocab_size=shortlist.vocab_size, condition_dim=CONDITION_DIM, **TINY)
    tokens = shortlist.encode(CAPTIONS, max_length=TINY["max_length"])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        decoder.loss(conditions, tokens, pad_id=shortlist.pad_id).backward()
        optimizer.step()
    return decoder.eval()


def until_eos(ids: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row up to and including its first EOS (all of it if it has none)."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return rows


def sequence_log_prob(decoder: CaptionDecoder, condition: torch.Tensor, ids: torch.Tensor, bos_id: int, eos_id: int):
    """(N,) sum log-prob of each generated row up to its EOS, as generate scores it (BOS ruled out)."""
    tokens = torch.cat([torch.full((len(ids), 1), bos_id), ids], dim=1)
    with torch.no_grad():
        logits = decoder(condition, tokens[:, :-1]).float()
    logits[..., bos_id] = -torch.inf
    picked = logits.log_softmax(-1).gather(2, tokens[:, 1:, None]).squeeze(2)  # (N, L')
    lengths = torch.tensor([len(row) for row in until_eos(ids, eos_id)])
    keep = torch.arange(ids.shape[1])[None] < lengths[:, None]
    return (picked * keep).sum(dim=1)


# ----- tokenizer ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocabulary", ["full", "shortlist"])
def test_round_trip(vocabulary, request):
    tokenizer: CaptionTokenizer = request.getfixturevalue(vocabulary)
    assert tokenizer.decode(tokenizer.encode(CAPTIONS, max_length=40)) == CAPTIONS


def test_decode_normalises_as_clip(full):
    """CLIP's own text normalisation (lowercase, single spaces), with punctuation back on its word."""
    text = "A  Red CAR, parked! "
    clip = SimpleTokenizer()
    assert clip.decode(clip.encode(text)).strip() == "a red car , parked !"
    assert full.decode(full.encode([text], max_length=40)) == ["a red car, parked!"]


def test_vocabulary_layout(full, shortlist):
    assert (full.vocab_size, full.pad_id, full.unk_id) == (49409, 0, None)
    assert full.token_ids == list(range(49408))
    assert shortlist.unk_id == 1 and 49406 in shortlist.token_ids and 49407 in shortlist.token_ids
    assert shortlist.vocab_size == 2 + len(shortlist.token_ids) < 40
    assert shortlist.bos_id != shortlist.eos_id and {shortlist.bos_id, shortlist.eos_id}.isdisjoint({0, 1})


def test_encode_layout(shortlist):
    ids = shortlist.encode(["a red car", "cat"], max_length=12)
    assert ids.dtype == torch.long and ids.shape == (2, 5)
    bos, eos, pad = shortlist.bos_id, shortlist.eos_id, shortlist.pad_id
    assert ids[0, 0] == bos and ids[0, -1] == eos
    assert ids[1].tolist()[:1] == [bos] and ids[1, 2] == eos and ids[1, 3:].tolist() == [pad, pad]


def test_truncation_keeps_eos(shortlist):
    ids = shortlist.encode([CAPTIONS[4]], max_length=5)
    assert ids.shape == (1, 5) and ids[0, -1] == shortlist.eos_id
    assert shortlist.decode(ids) == ["a wooden table"]


def test_rebuilt_from_token_ids(shortlist, full):
    for tokenizer in (shortlist, full):
        rebuilt = CaptionTokenizer(token_ids=tokenizer.token_ids)
        assert rebuilt.vocab_size == tokenizer.vocab_size and rebuilt.token_ids == tokenizer.token_ids
        torch.testing.assert_close(rebuilt.encode(CAPTIONS, max_length=40), tokenizer.encode(CAPTIONS, max_length=40))
    # BOS and EOS come in even when not given (and order does not matter)
    assert CaptionTokenizer(token_ids=[7, 3]).token_ids == [3, 7, 49406, 49407]


def test_unknown_words_are_unk(shortlist):
    ids = shortlist.encode(["a purple car"], max_length=12)
    assert shortlist.unk_id in ids.tolist()[0]
    assert shortlist.decode(ids) == [f"a {UNK_TEXT} car"]


def test_decode_stops_at_first_eos(shortlist):
    eos, word = shortlist.eos_id, shortlist.encode(["cat"], max_length=12)[0, 1].item()
    assert shortlist.decode([[word, eos, eos, eos], [shortlist.bos_id, word, eos, word, 0]]) == ["cat", "cat"]


def test_bad_captions(shortlist):
    with pytest.raises(ValueError, match="caption 1 is empty"):
        shortlist.encode(["a red car", "   "], max_length=12)
    with pytest.raises(ValueError, match="max_length"):
        shortlist.encode(["a red car"], max_length=2)
    with pytest.raises(ValueError, match="CLIP BPE ids"):
        CaptionTokenizer(token_ids=[49408])


# ----- decoder ------------------------------------------------------------------------------------------------------
def test_blocks_are_taps_size():
    with torch.device("meta"):  # sizes only, no memory
        decoder = CaptionDecoder(vocab_size=49409, condition_dim=512)
    assert 37e6 < sum(p.numel() for p in decoder.blocks.parameters()) < 39e6


def test_overfits_and_greedy_reproduces(trained, shortlist, conditions):
    ids = trained.generate(conditions, bos_id=shortlist.bos_id, eos_id=shortlist.eos_id)
    assert shortlist.decode(ids) == CAPTIONS


def test_decoding_stops_at_eos(trained, shortlist, conditions):
    eos = shortlist.eos_id
    ids = trained.generate(conditions, bos_id=shortlist.bos_id, eos_id=eos, num_beams=3)
    rows = until_eos(ids, eos)
    assert len({len(row) for row in rows}) > 1 and all(row[-1] == eos for row in rows)
    assert ids.shape[1] == max(map(len, rows))
    for full_row, row in zip(ids.tolist(), rows, strict=True):
        assert full_row[len(row) :] == [eos] * (ids.shape[1] - len(row))  # nothing but padding after EOS


@pytest.mark.parametrize("num_beams", [1, 3])
def test_eos_first(shortlist, conditions, num_beams):
    decoder = CaptionDecoder(vocab_size=shortlist.vocab_size, condition_dim=CONDITION_DIM, **TINY).eval()
    with torch.no_grad():
        decoder.head.bias[shortlist.eos_id] = 100.0  # every caption ends at once
    ids = decoder.generate(conditions, bos_id=shortlist.bos_id, eos_id=shortlist.eos_id, num_beams=num_beams)
    assert ids.tolist() == [[shortlist.eos_id]] * len(conditions)
    assert shortlist.decode(ids) == [""] * len(conditions)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_max_length(trained, random_decoder, shortlist, conditions, num_beams):
    for decoder in (trained, random_decoder):
        ids = decoder.generate(conditions, bos_id=shortlist.bos_id, eos_id=shortlist.eos_id, max_length=4)
        assert ids.shape[1] <= 3
        ids = decoder.generate(conditions, bos_id=shortlist.bos_id, eos_id=shortlist.eos_id, num_beams=num_beams)
        assert ids.shape[1] <= TINY["max_length"] - 1


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("model", ["trained", "random_decoder"])
def test_batched_equals_one_by_one(model, num_beams, shortlist, conditions, request):
    decoder, kwargs = request.getfixturevalue(model), {"bos_id": shortlist.bos_id, "eos_id": shortlist.eos_id}
    batched = until_eos(decoder.generate(conditions, num_beams=num_beams, **kwargs), shortlist.eos_id)
    single = [
        until_eos(decoder.generate(c[None], num_beams=num_beams, **kwargs), shortlist.eos_id)[0] for c in conditions
    ]
    assert batched == single


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("model", ["trained", "random_decoder"])
def test_cache_equals_no_cache(model, num_beams, shortlist, conditions, request):
    decoder, kwargs = request.getfixturevalue(model), {"bos_id": shortlist.bos_id, "eos_id": shortlist.eos_id}
    cached = decoder.generate(conditions, num_beams=num_beams, use_cache=True, **kwargs)
    torch.testing.assert_close(decoder.generate(conditions, num_beams=num_beams, use_cache=False, **kwargs), cached)


def test_incremental_logits_match_forward(random_decoder, conditions):
    tokens = torch.randint(0, random_decoder.vocab_size, (len(conditions), 9))
    with torch.no_grad():
        reference = random_decoder(conditions, tokens)
        cache = KVCache()
        # one chunk of 3, then one token at a time, then a chunk of 2 (a cached prefix and several new queries)
        parts = [random_decoder(conditions, tokens[:, :end], cache=cache) for end in (3, 4, 5, 6, 7, 9)]
    assert cache.length == random_decoder.prefix_tokens + 9
    torch.testing.assert_close(torch.cat(parts, dim=1), reference)


def test_one_beam_is_greedy(random_decoder, trained, shortlist, conditions):
    for decoder in (random_decoder, trained):
        greedy = decoder.generate(conditions, bos_id=shortlist.bos_id, eos_id=shortlist.eos_id)
        for alpha in (0.0, 1.0):
            with torch.no_grad():
                beam = decoder._beam_search(  # generate sends num_beams=1 to greedy, so call the search itself
                    conditions,
                    bos_id=shortlist.bos_id,
                    eos_id=shortlist.eos_id,
                    steps=TINY["max_length"] - 1,
                    cache=KVCache(),
                    beams=1,
                    alpha=alpha,
                )
            torch.testing.assert_close(beam, greedy)


def test_beams_find_likelier_captions(random_decoder, shortlist, conditions):
    kwargs = {"bos_id": shortlist.bos_id, "eos_id": shortlist.eos_id, "length_penalty": 0.0}
    greedy = random_decoder.generate(conditions, **kwargs)
    beam = random_decoder.generate(conditions, num_beams=4, **kwargs)
    scores = [
        sequence_log_prob(random_decoder, conditions, ids, shortlist.bos_id, shortlist.eos_id) for ids in (greedy, beam)
    ]
    assert (scores[1] >= scores[0] - 1e-5).all() and (scores[1] > scores[0] + 1e-3).any()


def test_loss_ignores_padding(random_decoder, shortlist, conditions):
    tokens = shortlist.encode(CAPTIONS, max_length=12)
    padded = torch.cat([tokens, torch.full((len(tokens), 1), shortlist.pad_id)], dim=1)
    with torch.no_grad():
        loss = random_decoder.loss(conditions, tokens, pad_id=shortlist.pad_id)
        torch.testing.assert_close(random_decoder.loss(conditions, padded, pad_id=shortlist.pad_id), loss)


def test_causal(random_decoder, conditions):
    tokens = torch.randint(0, random_decoder.vocab_size, (len(conditions), 8))
    changed = tokens.clone()
    changed[:, 5] = (tokens[:, 5] + 1) % random_decoder.vocab_size
    with torch.no_grad():
        before, after = random_decoder(conditions, tokens), random_decoder(conditions, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_generate_keeps_the_mode(shortlist, conditions):
    decoder = CaptionDecoder(vocab_size=shortlist.vocab_size, condition_dim=CONDITION_DIM, **TINY).train()
    decoder.generate(conditions, bos_id=shortlist.bos_id, eos_id=shortlist.eos_id, max_length=3)
    assert decoder.training


def test_bad_inputs(random_decoder, conditions):
    tokens = torch.zeros(len(conditions), 4, dtype=torch.long)
    with torch.no_grad():
        with pytest.raises(ValueError, match="condition must be"):
            random_decoder(conditions[:, :-1], tokens)
        with pytest.raises(ValueError, match="max_length=12"):
            random_decoder(conditions, torch.zeros(len(conditions), TINY["max_length"] + 1, dtype=torch.long))
        with pytest.raises(ValueError, match="the loss needs"):
            random_decoder.loss(
                conditions, torch.zeros(len(conditions), TINY["max_length"] + 1, dtype=torch.long), pad_id=0
            )
        with pytest.raises(ValueError, match="conditions for"):
            random_decoder(conditions[:2], tokens)
        with pytest.raises(ValueError, match="int64"):
            random_decoder(conditions, tokens[0])
        with pytest.raises(ValueError, match="condition must be"):
            random_decoder.generate(conditions[:, :-1], bos_id=2, eos_id=3)
        with pytest.raises(ValueError, match="max_length"):
            random_decoder.generate(conditions, bos_id=2, eos_id=3, max_length=TINY["max_length"] + 1)
        with pytest.raises(ValueError, match="num_beams"):
            random_decoder.generate(conditions, bos_id=2, eos_id=3, num_beams=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"width": 30}, "heads"),
        ({"width": 12}, "even"),
        ({"depth": 0}, "positive"),
        ({"max_length": 0}, "positive"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_constructor_arguments(settings, message):
    with pytest.raises(ValueError, match=message):
        CaptionDecoder(vocab_size=10, condition_dim=CONDITION_DIM, **{**TINY, **settings})


def test_rotary_positions_match_transformers_llama():
    """Parity with the reference implementation of rotary embeddings (Llama's, in transformers)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)
    positions = torch.arange(9)
    cos, sin = LlamaRotaryEmbedding(config=config)(q, positions[None])
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours_cos, ours_sin = rotary_tables(positions, 16)
    torch.testing.assert_close(apply_rotary(q, ours_cos, ours_sin), expected_q)
    torch.testing.assert_close(apply_rotary(k, ours_cos, ours_sin), expected_k)


def test_default_decoder_is_taps_size():
    """TAP's decoder: ~38M parameters in its 12 blocks (docs/captioning.md quotes these counts)."""
    with torch.device("meta"):
        decoder = CaptionDecoder(vocab_size=CaptionTokenizer().vocab_size, condition_dim=512 + 256)
    assert sum(p.numel() for p in decoder.blocks.parameters()) == 37_828_608
    assert sum(p.numel() for p in decoder.parameters()) == 88_867_073


def test_decoded_punctuation_sits_on_its_word():
    text = "a red circle in the middle, in front of a blue square."
    tokenizer = CaptionTokenizer.from_corpus([text])
    assert tokenizer.decode(tokenizer.encode([text], max_length=30)) == [text]
