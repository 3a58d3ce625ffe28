"""The emoji data: deterministic concepts and renders, a held-out split that never leaks into training."""

import torch

from rglcd.data.emoji import (CAPTION_TEMPLATES, augment, captions, heldout_names, is_flag, is_heldout_by_hash,
                              list_concepts, load_renders, render, split_concepts)


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
    train_c, train_images = load_renders("train")
    assert not {c.name for c in train_c} & heldout_names()
    assert train_images.shape == (len(train_c), 3, 64, 64) and train_images.dtype == torch.uint8


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
