"""Training data without TensorFlow: uploaded datasets read from storage, class names, splits and oversampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from shared.config.errors import DatasetNotTrainable, DatasetTooLarge
from tests.factories import encode
from tests.training_factories import class_folder_zip, ingest_bytes, npz_with_y, real_digits
from tests.worker.conftest import ContextFactory
from worker.datasets import UPLOADED, class_names, load_labelled
from worker.training import oversample, split_training

SHAPES = {0: "circle", 1: "stroke", 7: "seven"}


def test_class_names_sort_numbers_by_value_and_words_alphabetically() -> None:
    """Integer labels are ordered by value (2 before 10); any other labels alphabetically."""
    assert class_names(["10", "2", "7", "2"]) == ["2", "7", "10"]
    assert class_names(["stroke", "circle", "seven", "circle"]) == ["circle", "seven", "stroke"]
    assert class_names(["1", "b", "a"]) == ["1", "a", "b"]


def test_class_folder_zip_loads_with_folder_names_and_a_seeded_stratified_split(make_ctx: ContextFactory) -> None:
    """A class-folder zip becomes Digits named after its folders; 20% of each class is held out, the same way for
    the same seed, differently for another."""
    ctx = make_ctx()
    with ctx.sessions() as session:
        ds = ingest_bytes(session, ctx.settings, class_folder_zip(SHAPES, 20), "shapes.zip")
        session.commit()
        session.expunge(ds)
    digits = load_labelled(ctx.settings, ds, seed=3)
    assert digits.labels == ("circle", "seven", "stroke") and digits.source == UPLOADED
    assert digits.x_train.shape == (48, 28, 28) and digits.x_train.dtype == np.uint8
    assert np.bincount(digits.y_test).tolist() == [4, 4, 4] and np.bincount(digits.y_train).tolist() == [16] * 3
    info = json.loads(json.dumps(digits.describe()))
    assert info["dataset_id"] == str(ds.id) and info["test_class_counts"] == {"circle": 4, "seven": 4, "stroke": 4}
    assert info["undecodable_items"] == 0 and info["dataset_name"] == "shapes.zip"
    again, other = load_labelled(ctx.settings, ds, seed=3), load_labelled(ctx.settings, ds, seed=4)
    assert again.test_split() == digits.test_split() and np.array_equal(again.x_train, digits.x_train)
    assert other.test_split()["sha256"] != digits.test_split()["sha256"]
    assert digits.test_split()["test_size"] == 12 and digits.test_split()["dataset_id"] == str(ds.id)


def test_images_are_real_digits_light_on_dark(make_ctx: ContextFactory) -> None:
    """Decoded PNGs keep MNIST polarity and each class's images differ from the other classes' on average."""
    ctx = make_ctx()
    with ctx.sessions() as session:
        ds = ingest_bytes(session, ctx.settings, class_folder_zip(SHAPES, 15), "shapes.zip")
        session.commit()
        session.expunge(ds)
    digits = load_labelled(ctx.settings, ds, seed=0)
    assert digits.x_train[:, 0, :].max() == 0 and digits.x_train.max() > 200
    means = [digits.x_train[digits.y_train == c].mean(axis=0) for c in range(3)]
    assert np.abs(means[0] - means[2]).mean() > 10  # circle (0s) and stroke (1s) look different


def test_undecodable_and_unlabelled_items_are_skipped_and_counted(make_ctx: ContextFactory) -> None:
    """A file that is not an image is skipped and named; a top-level (unlabelled) file is counted, not trained on."""
    ctx = make_ctx()
    extra = [("stroke/notes.txt", b"not an image"), ("README.png", b"neither")]
    with ctx.sessions() as session:
        ds = ingest_bytes(session, ctx.settings, class_folder_zip(SHAPES, 10, extra=extra), "shapes.zip")
        session.commit()
        session.expunge(ds)
    info = load_labelled(ctx.settings, ds, seed=0).describe()
    assert info["train_size"] + info["test_size"] == 30
    assert (info["undecodable_items"], info["unlabelled_items"]) == (1, 1)
    assert info["undecodable_examples"][0]["id"] == "stroke/notes.txt"


def test_pictures_with_nothing_to_read_are_skipped_and_counted(make_ctx: ContextFactory) -> None:
    """A labelled white page (and an all-zero array item) is not trained on: scoring would answer it with no label."""
    ctx = make_ctx()
    extra = [("circle/blank.png", encode(Image.new("L", (40, 40), 255), "PNG"))]
    with ctx.sessions() as session:
        ds = ingest_bytes(session, ctx.settings, class_folder_zip(SHAPES, 10, extra=extra), "shapes.zip")
        session.commit()
        session.expunge(ds)
    info = load_labelled(ctx.settings, ds, seed=0).describe()
    assert (info["train_size"] + info["test_size"], info["unreadable_items"], info["undecodable_items"]) == (30, 1, 0)
    x, y = real_digits({2: 12, 3: 12})
    x[0] = 0
    with ctx.sessions() as session:
        arrays = ingest_bytes(session, ctx.settings, npz_with_y(x, y), "d.npz")
        session.commit()
        session.expunge(arrays)
    info = load_labelled(ctx.settings, arrays, seed=0).describe()
    assert (info["train_size"] + info["test_size"], info["unreadable_items"]) == (23, 1)


def test_array_labels_name_the_classes(make_ctx: ContextFactory) -> None:
    """An .npz with integer y: the classes are its distinct values, in numeric order."""
    ctx = make_ctx()
    x, y = real_digits({2: 12, 9: 12, 3: 12})
    y = np.where(y == 9, 10, y)  # labels 2, 3 and 10
    with ctx.sessions() as session:
        ds = ingest_bytes(session, ctx.settings, npz_with_y(x, y), "d.npz")
        session.commit()
        session.expunge(ds)
    digits = load_labelled(ctx.settings, ds, seed=0)
    assert digits.labels == ("2", "3", "10")
    named = np.array(digits.labels)[digits.y_train]
    for label in digits.labels:  # every training image kept its own label
        want = {w.tobytes() for w in x[y == int(label)]}
        assert {g.tobytes() for g in digits.x_train[named == label]} <= want


def test_past_the_item_bound_or_with_one_class_is_refused(make_ctx: ContextFactory) -> None:
    """More images than INFERQ_TRAIN_MAX_ITEMS is DatasetTooLarge; one usable class is DatasetNotTrainable."""
    ctx = make_ctx(train_max_items=20)
    extra = [(f"stroke/bad{i}.png", b"broken") for i in range(3)]
    with ctx.sessions() as session:
        big = ingest_bytes(session, ctx.settings, class_folder_zip(SHAPES, 10), "big.zip")
        one = ingest_bytes(session, ctx.settings, class_folder_zip({0: "circle"}, 12, extra=extra), "one.zip")
        session.commit()
        session.expunge_all()
    with pytest.raises(DatasetTooLarge, match="INFERQ_TRAIN_MAX_ITEMS"):
        load_labelled(ctx.settings, big, seed=0)
    with pytest.raises(DatasetNotTrainable, match="at least two"):
        load_labelled(ctx.settings, one, seed=0)


def test_oversampling_balances_only_the_training_part() -> None:
    """Oversampling repeats training images of the smaller classes up to the largest class; the validation part
    is exactly the one without oversampling and no validation image is repeated into training."""
    y = np.array([0] * 60 + [1] * 15 + [2] * 5)
    plain = split_training(y, validation_split=0.2, seed=5)
    over = split_training(y, validation_split=0.2, seed=5, imbalance="oversample")
    assert np.array_equal(plain.validation, over.validation)
    counts = np.bincount(y[over.train])
    assert counts.tolist() == [np.bincount(y[plain.train]).max()] * 3
    assert set(over.train) == set(plain.train)  # every training image, and only those
    assert not set(over.train) & set(plain.validation)
    again = split_training(y, validation_split=0.2, seed=5, imbalance="oversample")
    assert np.array_equal(again.train, over.train)
    assert not np.array_equal(split_training(y, validation_split=0.2, seed=6, imbalance="oversample").train, over.train)


def test_oversample_draws_repeats_from_each_class_only() -> None:
    """Each added index belongs to the class it fills; a balanced set is returned unchanged but shuffled."""
    y = np.array([0, 0, 0, 0, 1, 2, 2])
    picked = oversample(np.arange(7), y, np.random.default_rng(0))
    assert np.bincount(y[picked]).tolist() == [4, 4, 4] and set(picked[y[picked] == 1]) == {4}
    balanced = oversample(np.arange(4), np.array([0, 1, 0, 1]), np.random.default_rng(0))
    assert sorted(balanced.tolist()) == [0, 1, 2, 3]


def test_a_validation_split_that_leaves_nothing_is_refused() -> None:
    """Holding out every image for validation leaves nothing to train on: a ValueError that says so."""
    with pytest.raises(ValueError, match="no training images"):
        split_training(np.array([0, 1]), validation_split=0.9, seed=0)
