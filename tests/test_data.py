"""The emoji data: deterministic concepts and renders, a held-out split that never leaks into training."""

from pathlib import Path

import torch

import pytest

from rglcd.data.batches import EmojiBatches, training_batches
from rglcd.data.emoji import (CAPTION_TEMPLATES, augment, captions, drop_captions, first_phrasings, heldout_names,
                              is_flag, is_heldout_by_hash, list_concepts, load_renders, render, sample_caption_batch,
                              split_concepts, split_list)
from rglcd.data.shards import DataError


def test_heldout_list_is_about_ten_percent_of_existing_concepts():
    names = {c.name for c in list_concepts()}
    held = heldout_names()
    assert held <= names, f"held-out names missing from the concept list: {sorted(held - names)[:5]}"
    assert 0.08 <= len(held) / len(names) <= 0.13
    assert held == {n for n in names if is_heldout_by_hash(n)}


def test_train_and_heldout_splits_are_disjoint_and_complete():
    concepts = list_concepts()
    train, held = split_concepts(concepts)
    assert {c.name for c in train}.isdisjoint({c.name for c in held})
    assert len(train) + len(held) == len(concepts)
    assert [c.name for c in split_list("train")] == [c.name for c in train]
    assert not {c.name for c in split_list("train")} & heldout_names()
    # the renders of a split: the held-out one (217 renders; the train split's 1,700 cost 15 s and go the same way)
    held_c, held_images = load_renders("heldout")
    assert {c.name for c in held_c} == heldout_names() == {c.name for c in held}
    assert held_images.shape == (len(held_c), 3, 64, 64) and held_images.dtype == torch.uint8
    assert torch.equal(held_images[5], torch.tensor(render(held_c[5].char)).permute(2, 0, 1))


def test_renders_are_made_once_per_concept_and_kept_in_the_cache(tmp_path, monkeypatch):
    from rglcd.data import emoji

    monkeypatch.setenv("RGLCD_CACHE", str(tmp_path))
    apple, cat, dog = (next(c for c in list_concepts() if c.name == n) for n in ("red apple", "cat", "dog"))
    drawn: list[str] = []
    render_all = emoji.render_all
    monkeypatch.setattr(emoji, "render_all", lambda cs, size: drawn.extend(c.name for c in cs) or render_all(cs, size))
    first = emoji.renders([cat, apple, cat], 16)
    assert drawn == ["cat", "red apple"] and first.shape == (3, 3, 16, 16) and first.dtype == torch.uint8
    assert torch.equal(first[0], first[2]) and torch.equal(first[1], torch.tensor(render(apple.char, 16)).permute(
        2, 0, 1))
    second = emoji.renders([dog, apple], 16)  # only the missing concept is drawn; the file grows by it
    assert drawn == ["cat", "red apple", "dog"] and torch.equal(second[1], first[1])
    assert torch.load(tmp_path / "emoji-renders-16.pt")["names"] == ["cat", "red apple", "dog"]


def test_skin_tone_variants_are_collapsed_and_names_unique():
    concepts = list_concepts()
    names = [c.name for c in concepts]
    assert len(names) == len(set(names))
    assert not any(chr(0x1F3FB) <= ch <= chr(0x1F3FF) for c in concepts for ch in c.char)


def test_render_is_deterministic_colour_and_centred():
    a, b = render("\U0001F34E"), render("\U0001F34E")  # red apple
    assert a.shape == (64, 64, 3) and (a == b).all()
    red = (a[..., 0].astype(int) - a[..., 1].astype(int)) > 80
    assert red.sum() > 300, "the apple should render in colour, not as a black outline"
    assert (a[0] == 255).all(), "margin row should be white"


def test_captions_and_flags():
    assert captions("red apple") == [t.format("red apple") for t in CAPTION_TEMPLATES]
    assert is_flag("\U0001F1E6\U0001F1EB") and not is_flag("\U0001F34E")


def test_augment_keeps_shape_and_range():
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    z = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(y, z)


def test_teacher_and_reward_training_data_hold_no_heldout_concept():
    from rglcd.data.emoji import training_concepts

    held = heldout_names()
    concepts, images = training_concepts()
    assert len(concepts) == len(images) > 1000
    assert not {c.name for c in concepts} & held
    assert not any(is_flag(c.char) for c in concepts)
    with_flags, _ = training_concepts(include_flags=True)
    assert len(with_flags) > len(concepts) and not {c.name for c in with_flags} & held


def test_heldout_halves_are_committed_disjoint_and_cover_the_heldout_list():
    from rglcd.data.emoji import heldout_half, heldout_half_by_hash

    val, test = heldout_half("val"), heldout_half("test")
    assert set(val).isdisjoint(test) and set(val) | set(test) == heldout_names()
    assert abs(len(val) - len(test)) <= 1
    assert heldout_half_by_hash(sorted(heldout_names())) == {"val": val, "test": test}


def test_evaluation_phrasings_are_never_training_phrasings():
    from rglcd.data.emoji import EVAL_PHRASINGS, phrased_prompts
    from rglcd.data.prompts import load_prompt_set

    assert set(EVAL_PHRASINGS["val"]).isdisjoint(CAPTION_TEMPLATES)
    assert set(EVAL_PHRASINGS["test"]).isdisjoint(CAPTION_TEMPLATES)
    assert set(EVAL_PHRASINGS["val"]).isdisjoint(EVAL_PHRASINGS["test"])
    assert phrased_prompts(["cat", "dog"], "val") == ["cat clipart", "a small image of dog"]
    free, plain = load_prompt_set("heldout-test-free"), load_prompt_set("heldout-test")
    assert len(free.prompts) == len(plain.prompts) == 108
    assert free.prompts[1] == EVAL_PHRASINGS["test"][1].format(plain.prompts[1])
    assert torch.equal(free.reference(8), plain.reference(8))


def test_wide_caption_set_extends_the_templates_and_shares_no_word_with_evaluation_phrasings():
    from rglcd.data.emoji import CAPTION_SETS, EVAL_PHRASINGS, WIDE_PHRASINGS, caption_templates

    wide = caption_templates("wide")
    assert wide[:12] == caption_templates("templates") == CAPTION_TEMPLATES and wide[12:] == WIDE_PHRASINGS
    assert len(wide) == len(set(wide)) == 48 and all(t.count("{}") == 1 for t in wide)
    words = {w.strip(",!") for t in wide for w in t.format("").split()}
    for phrasing in EVAL_PHRASINGS["val"] + EVAL_PHRASINGS["test"]:
        assert phrasing not in wide
        # every word an evaluation phrasing adds to the name is absent from training, bar function words and "emoji"
        # (in the original templates)
        assert not {w for w in phrasing.format("").split() if w not in ("a", "an", "of", "that", "me", "emoji")} & words
    assert captions("cat", "wide")[-1] == "a cat illustration"
    with pytest.raises(ValueError, match="unknown caption set 'broad': use templates or wide or words"):
        caption_templates("broad")
    assert set(CAPTION_SETS) == {"templates", "wide", "words"}


def test_distractor_captions_are_fixed_per_concept_and_never_use_a_concept_or_evaluation_word(tmp_path):
    from rglcd.data.emoji import (DISTRACTOR_FORMS, EVAL_PHRASINGS, distractor_captions, distractor_words,
                                  excluded_words)

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n##ing\nthe\nharbour\nApple\napple\nclipart\nmarble\ncafé\nviolin\n")
    assert distractor_words(vocab, {"apple", "clipart"}) == ["harbour", "marble", "violin"]
    words = ["harbour", "marble", "violin"]
    mine = distractor_captions("red apple", words)
    assert len(mine) == len(DISTRACTOR_FORMS) == 16 and mine == distractor_captions("red apple", words)
    assert mine[0].startswith("red apple ") and mine[8].endswith(" red apple") and mine[12].startswith("a ")
    assert all(c.replace("red apple", "").replace(" of ", " ").split()[-1] in words for c in mine)
    excluded = excluded_words()
    assert {"apple", "red", "cat", "clipart", "pictogram", "sticker", "colourful"} <= excluded
    full = captions("red apple", "words")
    assert full[:48] == captions("red apple", "wide") and len(full) == 64
    drawn = {c.split()[-1] for c in full[48:56]} | {c.split()[0] for c in full[56:60]}
    assert drawn.isdisjoint(excluded) and {p.format("red apple") for h in EVAL_PHRASINGS.values() for p in h}.isdisjoint(full)


def test_wide_training_tensors_hold_every_phrasing_of_each_concept(tiny_emoji_family):
    from rglcd.data.emoji import emoji_training_tensors
    from rglcd.models import load_family

    family = load_family(str(tiny_emoji_family))
    data = emoji_training_tensors(family, limit=2, caption_set="wide")
    plain = emoji_training_tensors(family, limit=2)
    assert data["context"].shape[:2] == (2, 48) and plain["context"].shape[:2] == (2, 12)
    assert torch.equal(data["context"][:, :12], plain["context"])  # the same states, a separate cache file
    name = data["captions"][0]
    assert data["captions"][:48] == captions(name, "wide")
    with pytest.raises(DataError, match="--captions applies to the emoji data only"):
        training_batches("shards/{00000..00001}.tar", None, caption_set="wide")
    with pytest.raises(DataError, match="unknown --captions 'broad'"):
        training_batches("emoji", family, caption_set="broad")


def test_caption_states_are_written_batch_by_batch_with_a_progress_bar_on_rank_0(tiny_emoji_family, monkeypatch,
                                                                                  capsys):
    from rglcd.data.emoji import encode_training_tensors
    from rglcd.models import encode_prompts, load_family

    family = load_family(str(tiny_emoji_family))
    texts = [t.format(n) for n in ("cat", "dog", "red apple") for t in CAPTION_TEMPLATES[:5]]
    latents = torch.zeros(3, 4, 8, 8)
    data = encode_training_tensors(latents, texts, family.tokenizer, family.text_encoder, batch_size=4,
                                   desc="caption cache")
    whole = torch.cat([encode_prompts(family.tokenizer, family.text_encoder, texts[i: i + 4])
                       for i in range(0, 15, 4)]).half()  # float32 states of every batch, then fp16
    assert data["context"].dtype == torch.float16 and torch.equal(data["context"].flatten(0, 1), whole)
    bar = capsys.readouterr().err
    size = (whole.nbytes + latents.nbytes) / 1e6
    assert f"caption cache ({size:.0f} MB)" in bar and "15/15" in bar
    monkeypatch.setenv("RANK", "1")
    encode_training_tensors(latents, texts, family.tokenizer, family.text_encoder, batch_size=4, desc="caption cache")
    assert "caption cache" not in capsys.readouterr().err


def test_caption_cache_benchmark_measures_one_build(tmp_path, monkeypatch):
    import json

    from tests.entry_points import run_entry_point

    monkeypatch.setenv("RGLCD_CACHE", str(tmp_path))
    code, out, err = run_entry_point(Path(__file__).resolve().parents[1] / "bench" / "caption_cache.py",
                                     ["--worker", "--limit-concepts", "2"])
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["concepts"] == 2 and result["captions"] == 96 and result["file_mb"] > 0
    assert result["seconds"] > 0 and result["peak_rss_growth_mb"] >= 0


def fake_training_tensors(n: int = 6, templates: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"latents": torch.randn(n, 4, 2, 2, generator=g),
            "context": torch.randn(n, templates, 5, 8, generator=g).half(),
            "empty": torch.randn(5, 8, generator=g).half(),
            "captions": [f"concept {i} phrasing {t}" for i in range(n) for t in range(templates)]}


def test_caption_dropout_is_one_draw_per_caption_and_none_at_zero():
    ctx, texts, empty = torch.randn(64, 5, 8), [f"c{i}" for i in range(64)], torch.randn(5, 8).half()
    g = torch.Generator().manual_seed(0)
    same = drop_captions(ctx, texts, empty, 0.0, g)
    assert same[0] is ctx and same[1] is texts
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    out, out_texts = drop_captions(ctx, texts, empty, 0.5, torch.Generator().manual_seed(3))
    dropped = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 10 < int(dropped.sum()) < 54
    assert out_texts == ["" if d else t for d, t in zip(dropped.tolist(), texts)]
    assert torch.equal(out[dropped], empty.float().expand(int(dropped.sum()), 5, 8))
    assert torch.equal(out[~dropped], ctx[~dropped]) and not torch.equal(ctx[dropped], out[dropped])  # input kept


def test_emoji_batches_drop_captions_like_every_source():
    data = fake_training_tensors()
    z, ctx, texts = sample_caption_batch(data, 32, torch.Generator().manual_seed(5), cfg_dropout=0.3)
    g = torch.Generator().manual_seed(5)
    idx, tmpl = torch.randint(6, (32,), generator=g), torch.randint(3, (32,), generator=g)
    kept_ctx, kept = data["context"][idx, tmpl].float(), [data["captions"][i * 3 + t] for i, t in zip(idx, tmpl)]
    want_ctx, want_texts = drop_captions(kept_ctx, kept, data["empty"], 0.3, g)
    assert torch.equal(z, data["latents"][idx]) and torch.equal(ctx, want_ctx) and texts == want_texts
    assert "" in texts and any(texts)
    assert all(torch.equal(c, data["empty"].float()) == (t == "") for c, t in zip(ctx, texts))


def test_named_batch_is_the_same_draw_with_each_concepts_name_states():
    """`--target-captions name`: the student's batch is unchanged (same draws, same dropout), and each sample also
    carries its concept's phrasing-0 states (empty where the caption was dropped); trajectories of names index
    concepts, `phrase` turns them into caption ids of the same concept."""
    data = fake_training_tensors()
    batches = EmojiBatches(None, data=data)
    z, ctx, texts = batches.batch(32, torch.Generator().manual_seed(5), 0.3)
    z2, ctx2, texts2, names = batches.named_batch(32, torch.Generator().manual_seed(5), 0.3)
    assert torch.equal(z, z2) and torch.equal(ctx, ctx2) and texts == texts2
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(6, (32,), generator=g)
    for i, t, c in zip(idx.tolist(), texts, names):
        assert torch.equal(c, data["empty"].float() if t == "" else data["context"][i, 0].float())
    assert "" in texts and not torch.equal(names, ctx)
    assert torch.equal(batches.name_states, data["context"][:, 0])
    concept = torch.tensor([0, 5, 2, 2])
    ids = batches.phrase(concept, torch.Generator().manual_seed(0))
    assert torch.equal(ids // 3, concept) and [batches.captions[i].split()[1] for i in ids] == ["0", "5", "2", "2"]


def test_first_phrasings_keeps_each_concepts_first_captions_and_their_states():
    data = fake_training_tensors(n=6, templates=3)
    two = first_phrasings(data, 2)
    assert two["captions"] == [f"concept {i} phrasing {t}" for i in range(6) for t in range(2)]
    assert torch.equal(two["context"], data["context"][:, :2]) and two["latents"] is data["latents"]
    assert first_phrasings(data, None) is data and first_phrasings(data, 3)["captions"] == data["captions"]
    batches = EmojiBatches(None, data=data, phrasings=2)
    _, ctx, texts = batches.batch(64, torch.Generator().manual_seed(0))
    assert {t.rsplit(" ", 1)[1] for t in texts} == {"0", "1"}  # never the third phrasing
    assert len(batches.captions) == 12 and batches.caption_states.shape[0] == 12  # trajectories draw from these
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"--phrasings must be in \[1, 3\]"):
            first_phrasings(data, bad)
    with pytest.raises(DataError, match="--phrasings applies to the emoji data"):
        training_batches("shards/{00000..00001}.tar", None, phrasings=4)
    assert CAPTION_TEMPLATES[:4] == ("{}", "{} emoji", "an emoji of {}", "a {} icon")  # the shipped students' four
