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


class CountingTokenizer(CharTokenizer):
    def __init__(self):
        self.calls = 0

    def decode(self, ids, skip_special_tokens=True):
        self.calls += 1
        return super().decode(ids, skip_special_tokens)


def test_a_block_of_tokens_is_decoded_once_with_stop_strings_too():
    """A whole decode costs more the longer the answer is; a speculative step pushes tens of tokens, and
    decoding after each of them (when stop strings are set, as most API clients send) cost milliseconds a
    token on long answers. Only the block that completes a stop string is walked token by token."""
    tokenizer = CountingTokenizer()
    stream = TextStream(tokenizer, ["</s>", "\n\nUser:"])
    text = "".join(stream.push(ids(block))[1] for block in ("Hello there, ", "how are you ", "today?"))
    assert text == "Hello there, how are you today?" and tokenizer.calls == 3
    kept, tail = stream.push(ids(" Fine.\n\nUser: more"))
    assert stream.stopped and tail == " Fine." and kept == len(" Fine.\n\nUser:")
