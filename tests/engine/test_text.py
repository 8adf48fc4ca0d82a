"""Stop strings and streaming text, with a character-level tokenizer (one token = one character)."""

from engine.generate import Emitter
from engine.text import TextStream


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 0))


def ids(s):
    return [ord(c) for c in s]


def test_stop_string_across_tokens_is_cut_and_never_shown():
    stream = TextStream(CharTokenizer(), ["END"])
    shown = []
    for ch in "hello EN":
        shown.append(stream.push([ord(ch)])[1])
    assert "".join(shown) == "hello "  # "EN" is held back: it may become "END"
    kept, text = stream.push(ids("D and more"))
    assert stream.stopped and kept == 1 and text == ""


def test_held_text_released_when_it_cannot_be_a_stop_string():
    stream = TextStream(CharTokenizer(), ["END"])
    out = stream.push(ids("hi E"))[1] + stream.push(ids("x"))[1]
    assert out == "hi Ex"


def test_emitter_stops_at_eos_inside_a_block_and_at_length():
    e = Emitter(CharTokenizer(), eos_ids={2}, stop_strings=(), max_new_tokens=10)
    kept, text = e.emit(ids("ab") + [2] + ids("cd"))
    assert kept == ids("ab") and text == "ab" and e.finished == "eos"
    e = Emitter(CharTokenizer(), eos_ids={2}, stop_strings=(), max_new_tokens=3)
    kept, text = e.emit(ids("abcdef"))
    assert kept == ids("abc") and text == "abc" and e.finished == "length"


def test_emitter_stop_string_in_a_block_keeps_tokens_up_to_it():
    e = Emitter(CharTokenizer(), eos_ids=set(), stop_strings=["\n\n"], max_new_tokens=50)
    t1 = e.emit(ids("one\n"))[1]
    kept, t2 = e.emit(ids("\ntwo"))
    assert t1 + t2 == "one" and e.finished == "stop" and kept == ids("\n")
