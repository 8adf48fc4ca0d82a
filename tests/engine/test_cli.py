"""`subspec` as a user runs it: JSON outputs, and exit code 2 with one clear line for bad input."""

import json
import os
import subprocess
import sys

import pytest
from real_configs import QWEN25_7B, QWEN25_32B


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_models_list_and_info_json(default_model_folder):
    r = run("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    names = [m["name"] for m in json.loads(r.stdout)]
    assert "SmolLM2-135M-Instruct" in names
    r = run("models", "info", "SmolLM2-135M-Instruct", "--json")
    info = json.loads(r.stdout)
    assert {"name", "path", "architecture", "parameters", "dtype", "size_bytes"} <= set(info)
    assert info["architecture"] == "llama"


def test_generate_json(default_model_folder):
    r = run("generate", "SmolLM2-135M-Instruct", "--prompt", "What is 2+2?", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "token_ids", "prompt_tokens", "new_tokens", "iterations", "tau", "tokens_per_s",
                "ttft_s", "method"):
        assert key in out
    assert out["method"] == "vanilla" and 0 < out["new_tokens"] <= 12 and out["tau"] == 1.0
    assert len(out["token_ids"]) == out["new_tokens"]


def test_generate_logprobs_plain_and_subspec_alike(default_model_folder):
    base = ("generate", "SmolLM2-135M-Instruct", "--prompt", "Name three colors.", "--max-new-tokens", "24",
            "--json", "--logprobs", "3")
    plain = json.loads(run(*base).stdout)
    r = run(*base, "--method", "subspec", "--depth", "8", "--topk", "3")
    assert r.returncode == 0, r.stderr
    spec = json.loads(r.stdout)
    assert spec["token_ids"] == plain["token_ids"] and spec["tau"] > 1
    for out in (plain, spec):
        assert [e["token_id"] for e in out["logprobs"]] == out["token_ids"]
        assert "".join(e["token"] for e in out["logprobs"]) == out["text"]
        for e in out["logprobs"]:
            values = [v for _, _, v in e["top"]]
            assert len(e["top"]) == 3 and values == sorted(values, reverse=True) and e["logprob"] <= values[0] <= 0
            assert e["top"][0][0] == e["token_id"]  # greedy: the likeliest
    # the same numbers, whichever way the tokens were decoded (a tree pass rounds unlike a one-token pass)
    assert [e["logprob"] for e in spec["logprobs"]] == pytest.approx([e["logprob"] for e in plain["logprobs"]],
                                                                     abs=1e-3)
    refused = run("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--logprobs", "3")
    assert refused.returncode == 2 and "add --json" in refused.stderr
    refused = run("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--logprobs", "21", "--json")
    assert refused.returncode == 2 and "top logprobs" in refused.stderr


def test_generate_format_json_answers_one_json_object_plain_and_subspec(default_model_folder):
    base = ("generate", "SmolLM2-135M-Instruct", "--prompt", "Describe a cat as a JSON object with keys name, age "
            "and color.", "--max-new-tokens", "64", "--format", "json", "--json")
    plain = json.loads(run(*base).stdout)
    spec = run(*base, "--method", "subspec", "--depth", "16", "--topk", "4")
    assert spec.returncode == 0, spec.stderr
    assert isinstance(json.loads(plain["text"]), dict) and json.loads(spec.stdout)["text"] == plain["text"]


def test_generate_schema_follows_a_json_schema_file_and_refuses_one_it_cannot_enforce(default_model_folder,
                                                                                    tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    (tmp_path / "person.json").write_text(json.dumps(schema))
    r = run("generate", "SmolLM2-135M-Instruct", "--prompt", "Invent a person, as JSON.", "--max-new-tokens", "48",
            "--schema", str(tmp_path / "person.json"), "--json")
    assert r.returncode == 0, r.stderr
    value = json.loads(json.loads(r.stdout)["text"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    (tmp_path / "bad.json").write_text(json.dumps({"type": "object", "properties": {"a": {"pattern": "x"}}}))
    (tmp_path / "deep.json").write_text('{"type": "array", "items": ' * 3000 + "{}" + "}" * 3000)
    for path, why in ((tmp_path / "bad.json", "pattern"), (tmp_path / "missing.json", "No such file"),
                      (tmp_path / "deep.json", "nests too deeply")):  # (a RecursionError's traceback before)
        r = run("generate", "SmolLM2-135M-Instruct", "--prompt", "x", "--schema", str(path))
        assert r.returncode != 0 and why in r.stderr and "Traceback" not in r.stderr


def test_generate_with_auto_depth_json(default_model_folder):
    base = ("generate", "SmolLM2-135M-Instruct", "--prompt", "Name three colors.", "--max-new-tokens", "16",
            "--json", "--device", "cpu")
    plain = json.loads(run(*base).stdout)
    r = run(*base, "--method", "subspec", "--depth", "auto8", "--topk", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["token_ids"] == plain["token_ids"]
    assert out["auto_depth"] is True and out["depth"] == 8
    assert 0 <= out["mean_depth"] <= 8


def test_generate_with_penalties_plain_and_subspec_json(default_model_folder):
    base = ("generate", "SmolLM2-135M-Instruct", "--prompt", "List ten fruits.", "--max-new-tokens", "24",
            "--json", "--device", "cpu")
    unpenalized = json.loads(run(*base).stdout)
    penalized = base + ("--repetition-penalty", "1.3", "--frequency-penalty", "0.2")
    plain = json.loads(run(*penalized).stdout)
    r = run(*penalized, "--method", "subspec", "--depth", "6", "--topk", "3")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token_ids"] == plain["token_ids"] != unpenalized["token_ids"]


@pytest.mark.parametrize("args,message", [
    (("models", "info", "no-such-model"), "no model named 'no-such-model'"),
    (("models", "import", "/nonexistent/path"), "does not exist"),
    (("models", "remove", "no-such-model"), "no model named"),
    (("generate", "/tmp", "--prompt", "hi"), "not a model folder"),
    (("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--top-p", "2"), "top-p must be in"),
    (("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--max-new-tokens", "100000"), "exceeds"),
    (("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--depth", "autox"), "expected a depth"),
    (("bench", "SmolLM2-135M-Instruct", "--prompts", "p.jsonl", "--depth", "8,-3"), "depth must be >= 0"),
])
def test_bad_input_is_one_clear_line_and_exit_2(default_model_folder, args, message):
    r = run(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr




def test_profile_json_on_a_machine_without_nvidia_driver():
    r = run("profile", "--json")
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)
    assert prof["gpus"] == [] and prof["nvml"]["available"] is False
    assert prof["ram"]["total_bytes"] > 0 and prof["cpu"]["cores_logical"] >= 1


def test_plan_from_config_json_alone(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(QWEN25_7B))
    r = run("plan", str(cfg), "--vram-gb", "8", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    for key in ("resident_layers", "substitute_bits", "kv_length", "slots", "depth", "topk",
                "predicted_vram_bytes", "predicted_tokens_per_s", "reasons"):
        assert key in plan
    assert plan["method"] == "subspec" and plan["depth"] >= 16
    assert plan["predicted_vram_bytes"] <= 8 * 2**30
    r = run("plan", str(cfg))  # this CPU-only machine: plain decoding from RAM, no deep tree
    assert r.returncode == 0 and "vanilla on cpu" in r.stdout


def test_plan_from_a_hub_repo_id_before_anything_is_downloaded(tmp_path, monkeypatch, capsys):
    from engine import cli, hub

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(QWEN25_7B))
    from_file = json.loads(run("plan", str(cfg), "--vram-gb", "8", "--json").stdout)
    r = run("plan", "qwen/Qwen2.5-7B-Instruct", "--vram-gb", "8", "--json")  # the catalogue's, offline
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["memory"] == from_file["memory"]
    asked = []
    monkeypatch.setattr(hub, "remote_config", lambda repo_id, **_kw: asked.append(repo_id) or dict(QWEN25_7B))
    assert cli.main(["plan", "someone/a-finetune", "--vram-gb", "8", "--json"]) == 0
    assert asked == ["someone/a-finetune"] and json.loads(capsys.readouterr().out)["memory"] == from_file["memory"]
    r = run("plan", "nobody/nothing", "--vram-gb", "8", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_plan_refuses_a_model_that_cannot_fit(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(QWEN25_32B))
    r = run("plan", str(cfg), "--vram-gb", "8")
    assert r.returncode == 2
    assert "does not fit" in r.stderr and "more" in r.stderr and "Traceback" not in r.stderr


def test_vram_cap_plans_the_split_and_the_substitute_bits_the_load_follows(tmp_path, monkeypatch, capsys):
    """`generate`/`bench --vram-gb G` on a GPU: the load gets the plan's resident layers and its per-layer
    substitute bits (a fake 24 GB card here; the load itself is not run)."""
    from types import SimpleNamespace

    from engine import cli, hardware
    from engine.config import ModelConfig
    from engine.planner import PREFILL_CHUNK, make_plan

    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    gpu = {"index": 0, "name": "fake", "total_bytes": 24 * 2**30, "free_bytes": 24 * 2**30, "used_bytes": 0,
           "pcie": {"gen_current": 4, "gen_max": 4, "width_current": 16, "width_max": 16}}
    profile = {"gpus": [gpu], "cuda": {"available": True, "h2d_bandwidth_gbps": None, "matmul_tflops": None},
               "ram": {"total_bytes": 64 * 2**30, "available_bytes": 60 * 2**30}}
    monkeypatch.setattr(hardware, "probe", lambda measure=False: profile)
    resident, bits, prefill = cli._planned_split(tmp_path, SimpleNamespace(vram_gb=12.0))
    plan = make_plan(ModelConfig.from_dict(QWEN25_7B), profile, vram_gb=12.0)
    assert (resident, bits, prefill) == (plan.resident_layers, plan.draft_bits, plan.prefill_pass_tokens)
    assert 8 in bits.values() and prefill > PREFILL_CHUNK
    assert "8-bit substitutes" in capsys.readouterr().err


def test_prompt_files_and_configs_are_read_as_utf8_whatever_the_locale(tmp_path):
    """Windows reads text as cp1252 unless told: a prompt with a curly quote or an emoji must come through,
    a Notepad BOM must not break the first line, and a file that is not UTF-8 is a clear error."""
    from engine.bench import read_prompts
    from engine.config import ModelConfig
    from engine.errors import SubspecError

    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes("\ufeff".encode() + json.dumps({"prompt": "Say “hi” 👋"}, ensure_ascii=False).encode())
    assert read_prompts(prompts) == [["Say “hi” 👋"]]
    prompts.write_bytes('{"prompt": "caf\xe9"}'.encode("cp1252"))
    with pytest.raises(SubspecError, match="cannot read prompts file"):
        read_prompts(prompts)
    config = tmp_path / "config.json"
    config.write_bytes(b'{"model_type": "llama", "_name": "caf\xe9"}')  # latin-1, not UTF-8
    with pytest.raises(SubspecError, match="cannot read"):
        ModelConfig.from_file(config)


def main_in_process(capsys, *args) -> tuple[int, str, str]:
    """engine.cli.main here (no interpreter start): argparse's errors exit 2 by SystemExit."""
    from engine import cli

    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


GEN = ("generate", "SmolLM2-135M-Instruct", "--prompt", "hi")
BENCH = ("bench", "SmolLM2-135M-Instruct", "--prompts")


@pytest.mark.parametrize("args,message", [
    (GEN + ("--temperature", "nan"), "must be a number >= 0"),
    (GEN + ("--temperature", "inf"), "must be a number >= 0"),
    (GEN + ("--method", "subspec", "--draft-temperature", "nan"), "must be a number > 0"),
    (GEN + ("--method", "subspec", "--group-size", "0"), "positive multiple of 8"),
    (GEN + ("--method", "subspec", "--group-size", "-64"), "positive multiple of 8"),
    (GEN + ("--device", "bogus"), "expected cpu, cuda or cuda:N"),
    (GEN + ("--repetition-penalty", "0"), "must be a number > 0"),
    (GEN + ("--repetition-penalty", "1e-45"), "from 0.01 to 100"),
    (GEN + ("--presence-penalty", "nan"), "presence penalty must be a number"),
    (GEN + ("--frequency-penalty", "inf"), "frequency penalty must be a number"),
    (GEN + ("--device", "cuda"), "no CUDA GPU here"),
    (GEN + ("--no-chat", "--system", "be brief"), "--system is part of the chat template"),
    (("models", "convert", "SmolLM2-135M-Instruct", "--group-size", "0"), "positive multiple of 8"),
    (("plan", "SmolLM2-135M-Instruct", "--vram-gb", "nan"), "must be a number > 0"),
    (("plan", "SmolLM2-135M-Instruct", "--vram-gb", "inf"), "must be a number > 0"),
    (("plan", "SmolLM2-135M-Instruct", "--reserve-gb", "nan"), "must be a number >= 0"),
    (("models", "catalogue", "--vram-gb", "inf"), "must be a number > 0"),
    (("models", "import", ""), "no path given"),
    (BENCH + ("{prompts}", "--max-new-tokens", "-1"), "--max-new-tokens must be >= 0"),
    (BENCH + ("{prompts}", "--limit", "-1"), "--limit must be >= 1"),
    (BENCH + ("{prompts}", "--methods", ""), "--methods takes vanilla, subspec or both"),
    (BENCH + ("{prompts}", "--methods", "vanila"), "--methods takes vanilla, subspec or both"),
    (BENCH + ("{prompts}", "--depth", ","), "--depth needs at least one value"),
    (BENCH + ("{prompts}", "--json-out", "/nonexistent/dir/x.json"), "cannot write --json-out"),
    (BENCH + ("{bad_turns}",), "'turns' must be a list of strings"),
])
def test_more_bad_input_is_one_clear_line_and_exit_2(default_model_folder, tmp_path, capsys, args, message):
    """Found by trying the command line as a user would: each of these was a traceback (NaN through the
    planner, a group size of 0 dividing by zero, --device cuda without CUDA after loading), accepted and
    ignored (bench --limit -1 ran one prompt, --methods '' ran every prompt to print nothing), or lost an
    hour of measurements (an unwritable --json-out found after the run)."""
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "t.jsonl").write_text('{"turns": "hi"}\n')
    args = [a.format(prompts=tmp_path / "p.jsonl", bad_turns=tmp_path / "t.jsonl") for a in args]
    code, _out, err = main_in_process(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_config_that_is_not_an_object_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2]")
    code, _out, err = main_in_process(capsys, "plan", str(tmp_path))
    assert code == 2 and "a model config is a JSON object; this one is a list" in err


def test_plan_reads_a_local_ggufs_header_and_says_the_ram_it_needs(default_model_folder, capsys):
    """A .gguf is planned from its header before importing it (as a hub GGUF is); on a CPU the text gives the
    RAM the model takes, as the JSON does (it printed the VRAM figure: 0)."""
    from engine import store

    code, out, err = main_in_process(capsys, "plan", str(store.default_gguf()), "--json")
    assert code == 0, err
    from_gguf = json.loads(out)
    code, out, _err = main_in_process(capsys, "plan", str(default_model_folder), "--json")
    from_folder = json.loads(out)
    assert from_gguf["predicted_host_bytes"] == from_folder["predicted_host_bytes"] > 0
    code, out, _err = main_in_process(capsys, "plan", str(default_model_folder))
    ram = from_folder["predicted_host_bytes"] / 2**30
    assert f"predicted RAM {ram:.2f} GB of" in out


def test_drafting_options_given_to_plain_decoding_are_said_to_be_ignored(default_model_folder, capsys):
    code, out, err = main_in_process(capsys, *GEN, "--max-new-tokens", "2", "--depth", "8", "--device", "cpu",
                                     "--json")
    assert code == 0 and "note: --depth only apply to --method subspec" in err and json.loads(out)["method"] == "vanilla"


def test_a_bench_that_fails_before_its_first_result_leaves_no_empty_json_out(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    out = tmp_path / "results.json"
    code, _o, err = main_in_process(capsys, "bench", "no-such-model", "--prompts", str(tmp_path / "p.jsonl"),
                                    "--json-out", str(out))
    assert code == 2 and "no model named" in err and not out.exists()
