"""Corpus handling: list-server artefacts removed, duplicates dropped before the split, time split."""

from __future__ import annotations

import pandas as pd

from features.message import parse_raw
from training.corpora import body_fingerprint, trec_split, undo_list_server
from training.dataset import deduplicate

LIST_MAIL = (
    "From: someone@uni.example\r\nTo: r-help@r-project.example\r\nSubject: [R] lm() with weights\r\n"
    "List-Id: Main R Mailing List <r-help.r-project.example>\r\n\r\n"
    "How do I pass weights to lm()?\r\n\r\n"
    "______________________________________________\r\n"
    "R-help@r-project.example mailing list\r\n"
    "https://stat.example/mailman/listinfo/r-help\r\n"
    "PLEASE do read the posting guide\r\n"
)


def test_a_list_servers_subject_tag_and_footer_are_removed() -> None:
    parsed = undo_list_server(parse_raw(LIST_MAIL))
    assert parsed.subject == "lm() with weights"
    assert parsed.text.strip() == "How do I pass weights to lm()?"


def test_mail_that_did_not_come_through_a_list_is_left_alone() -> None:
    direct = LIST_MAIL.replace("List-Id: Main R Mailing List <r-help.r-project.example>\r\n", "")
    parsed = undo_list_server(parse_raw(direct))
    assert parsed.subject == "[R] lm() with weights"
    assert "listinfo" in parsed.text


def test_fingerprint_folds_case_spacing_and_numbers() -> None:
    assert body_fingerprint("a", "Win  $1000 NOW, reply today\n") == body_fingerprint(
        "b", "win $2500 now, reply  TODAY"
    )
    assert body_fingerprint("a", "ok") != body_fingerprint("b", "ok")  # near-empty bodies keep their subject apart
    assert body_fingerprint("a", "win money now please reply") != body_fingerprint("a", "meeting notes for today ok")


def test_trec_is_split_by_delivery_order() -> None:
    splits = [trec_split(n, 100) for n in range(1, 101)]
    assert splits[:70] == ["train"] * 70
    assert splits[70:80] == ["calibration"] * 10
    assert splits[80:] == ["test"] * 20


def test_a_body_seen_in_training_is_dropped_from_test() -> None:
    frame = pd.DataFrame(
        {
            "source": ["trec", "trec", "trec", "spamassassin"],
            "name": ["a", "b", "c", "d"],
            "order": [900, 10, 20, 5],
            "split": ["test", "train", "train", "train"],
            "fingerprint": ["same", "same", "other", "sa-only"],
            "label": [1, 1, 0, 1],
        }
    )
    kept = deduplicate(frame)
    assert set(kept["name"]) == {"b", "c", "d"}
