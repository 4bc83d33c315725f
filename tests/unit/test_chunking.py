import pytest
from pydantic import ValidationError

from rerank.chunking import Chunking, chunk_documents, split

WORDS = " ".join(f"w{i}" for i in range(10))


def test_short_text_is_one_chunk():
    assert split("a few words", Chunking(size=5, overlap=1)) == ["a few words"]


def test_long_text_is_cut_into_overlapping_chunks_of_original_text():
    assert split(WORDS, Chunking(size=4, overlap=1, max_chunks=10)) == [
        "w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]


def test_max_chunks_caps_the_number_scored():
    assert len(split(WORDS, Chunking(size=2, overlap=0, max_chunks=3))) == 3


def test_overlap_must_be_smaller_than_size():
    with pytest.raises(ValidationError, match="overlap must be smaller"):
        Chunking(size=4, overlap=4)


def test_document_score_is_its_best_chunk_and_the_winner_is_named():
    chunked = chunk_documents(["short", WORDS], Chunking(size=4, overlap=1))
    assert chunked.owners == [0, 1, 1, 1]
    scores, winners = chunked.best(2, [0.3, 0.1, 0.9, 0.5])
    assert scores == [0.3, 0.9] and winners == [0, 1]


def test_unscored_chunks_are_ignored_and_a_document_without_any_has_no_score():
    chunked = chunk_documents(["a", WORDS], Chunking(size=4, overlap=1))
    assert chunked.best(2, [None, None, 0.2, None]) == ([None, 0.2], [None, 1])
