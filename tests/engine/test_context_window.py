"""A conversation that outgrows the context drops its oldest turns, keeps the system message, and says how
many messages went; on the real default model's chat template."""

import pytest

from engine.context_window import fit_conversation


def conversation(turns: int, system: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": "You are terse."}] if system else []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i}: " + "why " * 40},
                 {"role": "assistant", "content": f"answer {i}: " + "because " * 40}]
    return msgs + [{"role": "user", "content": "and the last question?"}]


@pytest.mark.parametrize("system", [True, False])
def test_the_oldest_turns_go_first_and_the_system_message_stays(smollm2, system):
    msgs = conversation(12, system)
    full = smollm2.encode_messages(msgs)
    budget = len(full) // 2
    ids, dropped = fit_conversation(smollm2.encode_messages, msgs, budget)
    head = 1 if system else 0
    kept = msgs[:head] + msgs[head + dropped:]
    assert 0 < dropped < len(msgs) - head and dropped % 2 == 0  # whole turns, from a user message on
    assert kept[head]["role"] == "user" and ids == smollm2.encode_messages(kept) and len(ids) <= budget
    # The longest tail that fits: one more turn would not.
    longer = msgs[:head] + msgs[head + dropped - 2:]
    assert len(smollm2.encode_messages(longer)) > budget
    if system:
        assert "You are terse." in smollm2.tokenizer.decode(ids)


def test_a_conversation_that_fits_is_untouched_and_one_that_never_fits_is_left_to_the_context_check(smollm2):
    msgs = conversation(2)
    full = smollm2.encode_messages(msgs)
    assert fit_conversation(smollm2.encode_messages, msgs, len(full)) == (full, 0)
    assert fit_conversation(smollm2.encode_messages, msgs, 10) == (full, 0)  # not even the last turn fits


def test_encodings_are_a_binary_search(smollm2):
    calls = []

    def encode(m):
        calls.append(len(m))
        return smollm2.encode_messages(m)

    msgs = conversation(40)
    fit_conversation(encode, msgs, len(smollm2.encode_messages(msgs)) // 3)
    assert len(calls) <= 2 + 6  # the whole, then log2(41 turn starts) + 1


def test_with_slack_the_turns_left_out_change_seldom_so_the_prompt_keeps_its_beginning(smollm2):
    """A chat past its context: without slack every turn leaves out one more turn, so every prompt begins
    anew (no KV cache reuse); with the chat's slack turns go a quarter of the budget at a time, and in
    between the prompt only grows at its end."""
    from engine.context_window import ROOM_AFTER_DROPPING

    budget = 700
    drops = {}
    for slack in (0.0, ROOM_AFTER_DROPPING):
        msgs, seen, last_ids = [{"role": "system", "content": "You are terse."}], [], None
        for i in range(40):
            msgs.append({"role": "user", "content": f"question {i}: " + "why " * 12})
            ids, dropped = fit_conversation(smollm2.encode_messages, msgs, budget, slack=slack)
            assert len(ids) <= budget
            if seen and dropped == seen[-1] and slack:
                assert ids[:len(last_ids) - 4] == last_ids[:len(last_ids) - 4]  # (up to the last turn's end)
            seen.append(dropped)
            last_ids = ids
            msgs.append({"role": "assistant", "content": f"answer {i}: " + "because " * 12})
        drops[slack] = sum(a != b for a, b in zip(seen, seen[1:]))
    assert drops[0.0] >= 3 * drops[ROOM_AFTER_DROPPING] > 0
