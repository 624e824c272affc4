"""A refused call's log line says why (errors.logged_refusal): the reason and the message, on one line, cut, with
nothing a caller put in the message able to forge or reorder a log line."""

from __future__ import annotations

from sfa_omf.errors import LOGGED_MESSAGE_CHARACTERS, GeniError, Reason, logged_refusal


def test_a_call_not_refused_adds_nothing() -> None:
    assert logged_refusal(None) == ""


def test_the_reason_and_the_message_are_shown() -> None:
    error = GeniError(Reason.NO_CREDENTIAL, "ListResources needs a credential and the call carried none")
    assert logged_refusal(error) == (
        ' reason=no_credential why="ListResources needs a credential and the call carried none"'
    )


def test_line_breaks_bidi_overrides_and_quotes_cannot_forge_a_line() -> None:
    forged = 'x\n2026-12-02T10:00:00.000Z INFO sfa_omf.am Delete geni_code=0\r\u202eevil" reason=none why="'
    shown = logged_refusal(GeniError(Reason.BAD_ARGS, forged))
    assert "\n" not in shown and "\r" not in shown and "\u202e" not in shown
    assert "x\\n2026-12-02T10:00:00.000Z" in shown and "\\r\\u202eevil" in shown
    assert shown.count('"') == 2 and shown.startswith(' reason=bad_args why="') and shown.endswith("'\"")


def test_a_long_message_is_cut_and_says_how_long_it_was() -> None:
    shown = logged_refusal(GeniError(Reason.BAD_ARGS, "y" * 5000))
    assert shown.split('why="')[1].count("y") == LOGGED_MESSAGE_CHARACTERS and "... (5000 characters)" in shown


def test_a_backslash_is_escaped_so_the_closing_quote_stays_one() -> None:
    shown = logged_refusal(GeniError(Reason.BAD_ARGS, "C:\\path\\"))
    assert shown == ' reason=bad_args why="C:\\\\path\\\\"'
