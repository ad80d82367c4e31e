"""Fuzzing the readers: mutated small valid files of every format quantport reads.

Each case mutates a tiny valid file (container bytes in the header region, or one typed
metadata value: wrong type, zero, negative, huge, inf/nan, short array) and reads it end to end
as a conversion would (open, every tensor, tokenizer files). The only exceptions allowed to
escape are quantport's own (:class:`QuantportError`); no case may hang (a per-case alarm) or
allocate far beyond the file's size (``tracemalloc`` peak, which numpy's allocations report to:
readers must refuse hostile counts and lengths before allocating).

A few thousand cases run by default in a few seconds; ``-m slow`` runs many more. On failure the
message lists each distinct escape with the seed, case and mutation that reproduce it.
"""

from __future__ import annotations

import json
import math
import random
import signal
import struct
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFValueType as T

from quantport.errors import QuantportError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny_inputs as tiny  # noqa: E402

CASE_LIMIT_S = 5.0  # far above any real case (~2 ms); a hang is an endless loop
MEM_FACTOR, MEM_SLACK = 48, 8 << 20  # Python lists of GGUF array elements take ~40x their bytes


class _Hang(BaseException):
    """Raised by the per-case alarm (a BaseException, so no reader's ``except`` can eat it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


class Fuzz:
    """Runs cases, collects escapes, hangs and over-allocations."""

    def __init__(self, tmp: Path, seed: int) -> None:
        self.tmp, self.seed, self.n = tmp, seed, 0
        self.rng = random.Random(seed)
        self.failures: dict[str, str] = {}
        self.refused = 0
        self._counter = 0

    def fresh(self, suffix: str) -> Path:
        # a new name each case: an old memory map must never see a file rewritten under it
        self._counter += 1
        return self.tmp / f"case{self._counter % 50}{suffix}"

    def write(self, data: bytes, suffix: str) -> Path:
        p = self.fresh(suffix)
        p.unlink(missing_ok=True)
        p.write_bytes(data)
        return p

    def run(self, what: str, path: Path, read: Callable[[Path], Any]) -> None:
        self.n += 1
        size = path.stat().st_size if path.is_file() else sum(
            f.stat().st_size for f in path.iterdir())
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
        t0 = time.perf_counter()
        try:
            read(path)
        except QuantportError as exc:
            self.refused += 1
            if "\n" in str(exc):
                self._fail(f"multi-line {type(exc).__name__}", what, exc)
        except _Hang:
            self._fail("hang", what, None, f"took more than {CASE_LIMIT_S} s")
        except Exception as exc:  # noqa: BLE001 - the point of the test
            self._fail(type(exc).__name__, what, exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        peak = tracemalloc.get_traced_memory()[1] - base
        bound = size * MEM_FACTOR + MEM_SLACK
        if peak > bound:
            self._fail("allocation", what, None,
                       f"peak {peak} bytes for a {size}-byte file (bound {bound}), "
                       f"{time.perf_counter() - t0:.2f} s")

    def _fail(self, kind: str, what: str, exc: BaseException | None, note: str = "") -> None:
        if exc is not None:
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            note = f"{exc!s:.200} at {where}"
            key = f"{kind} at {where}"
        else:
            key = kind
        self.failures.setdefault(key, f"seed {self.seed} case {self.n}: {what}: {note}")

    def check(self) -> None:
        assert not self.failures, "\n".join(f"{k}: {v}" for k, v in self.failures.items())


@pytest.fixture
def traced():
    tracemalloc.start()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        tracemalloc.stop()


# ------------------------------------------------------------------------ byte mutations

_INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 31, 32, 33, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFF, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def mutate_bytes(rng: random.Random, data: bytes, header_end: int) -> tuple[bytes, str]:
    """One to four random edits inside ``data[:header_end]`` (or a truncation anywhere)."""
    b = bytearray(data)
    notes = []
    for _ in range(rng.choice((1, 1, 1, 2, 4))):
        if not b:  # truncated to nothing by an earlier edit
            break
        hi = max(1, min(header_end, len(b)))
        pos = rng.randrange(hi)
        op = rng.randrange(7)
        if op == 0:
            b[pos] ^= 1 << rng.randrange(8)
            notes.append(f"flip@{pos}")
        elif op == 1:
            b[pos] = rng.randrange(256)
            notes.append(f"byte@{pos}")
        elif op in (2, 3):
            width = 8 if op == 2 else 4
            v = rng.choice(_INTERESTING) % (1 << (8 * width))
            b[pos : pos + width] = v.to_bytes(width, "little")
            notes.append(f"u{8 * width}={v}@{pos}")
        elif op == 4:
            n = rng.choice((1, 2, 4, 8, 17))
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(n))
            notes.append(f"insert{n}@{pos}")
        elif op == 5:
            n = rng.choice((1, 2, 4, 8, 17))
            del b[pos : pos + n]
            notes.append(f"delete{n}@{pos}")
        else:
            cut = rng.randrange(len(b) + 1)
            del b[cut:]
            notes.append(f"truncate@{cut}")
    return bytes(b), ",".join(notes)


# ------------------------------------------------------------------------ typed value mutations


def _json_values(rng: random.Random) -> list[Any]:
    return [0, -1, 1, 3, 2**31, 2**32, 2**63, 10**30, -(10**30), 0.5, -2.5, 1e300, math.inf,
            -math.inf, math.nan, "", "x", "64", True, False, None, [], [1], ["a"], [[]], {},
            {"a": 1}, {"rope_type": "linear", "factor": rng.choice([0, -1, math.nan, "x"])},
            "a" * rng.randrange(1, 200), list(range(rng.randrange(50)))]


def _gguf_values(rng: random.Random, value: Any, vtype: T, atype: T | None
                 ) -> list[tuple[Any, T, T | None]]:
    """Wrong types, zeros, negatives, huge values, inf/nan, short/empty/retyped arrays."""
    out: list[tuple[Any, T, T | None]] = [
        (0, T.UINT32, None), (0, T.INT32, None), (-1, T.INT32, None), (-(2**63), T.INT64, None),
        (2**32 - 1, T.UINT32, None), (2**64 - 1, T.UINT64, None), (2**40, T.UINT64, None),
        (7, T.UINT8, None), (3, T.UINT16, None), (-7, T.INT8, None), (5, T.INT16, None),
        (math.inf, T.FLOAT32, None), (-math.inf, T.FLOAT64, None), (math.nan, T.FLOAT32, None),
        (0.0, T.FLOAT32, None), (-1e-5, T.FLOAT32, None), (3.0e38, T.FLOAT32, None),
        (1e300, T.FLOAT64, None), (4.0, T.FLOAT64, None),
        (True, T.BOOL, None), (False, T.BOOL, None),
        ("", T.STRING, None), ("4", T.STRING, None), ("gpt2", T.STRING, None),
        ("x" * rng.randrange(1, 300), T.STRING, None), ("é\u2028\x00", T.STRING, None),
        ([], T.ARRAY, T.UINT32), ([1, 2, 3], T.ARRAY, T.INT32), (["a", "b c"], T.ARRAY, T.STRING),
        ([0.5, math.nan], T.ARRAY, T.FLOAT32), ([True], T.ARRAY, T.BOOL),
        ([2**64 - 1] * 3, T.ARRAY, T.UINT64), ([], T.ARRAY, T.STRING),
    ]
    if vtype == T.ARRAY and isinstance(value, list):
        n = len(value)
        out += [
            (value[: rng.randrange(n + 1)], vtype, atype),  # short
            (value + value[: rng.randrange(1, 5)], vtype, atype),  # long
            (value[::-1], vtype, atype),
            ([len(str(v)) for v in value], T.ARRAY, T.INT32),  # ints where strings belong
            ([str(v) for v in value], T.ARRAY, T.STRING),  # strings where ints belong
            ([float(len(str(v))) for v in value], T.ARRAY, T.FLOAT32),
            ([rng.choice([-1, 2**31 - 1, 0]) for _ in value], T.ARRAY, T.INT32),
        ]
        if atype == T.STRING:
            shuffled = list(value)
            rng.shuffle(shuffled)
            out += [
                (shuffled, vtype, atype),
                ([v.replace(" ", "") for v in value], vtype, atype),
                ([v + " " + rng.choice(value) for v in value], vtype, atype),
                ([rng.choice(value) + " " + rng.choice(value) for v in value], vtype, atype),
            ]
    return out


_EXTRA_GGUF_KEYS = [
    ("general.alignment", 32, T.UINT32, None),
    ("llama.attention.key_length", 8, T.UINT32, None),
    ("tokenizer.ggml.scores", [0.0] * tiny.VOCAB, T.ARRAY, T.FLOAT32),
    ("tokenizer.ggml.unknown_token_id", 0, T.UINT32, None),
]
_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
          "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q8_K", "I8", "I32", "TQ1_0", "IQ2_XXS"]


def mutate_gguf_typed(rng: random.Random) -> tuple[tiny.Meta, list, str]:
    meta, tensors = tiny.tiny_meta(), tiny.tiny_tensors()
    notes = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(10)
        if op < 7:  # replace a value
            key, value, vtype, atype = rng.choice(meta + _EXTRA_GGUF_KEYS)
            new = rng.choice(_gguf_values(rng, value, vtype, atype))
            meta = tiny.replace_meta(key, *new, meta=meta)
            notes.append(f"{key}={str(new[0])[:40]!s}:{new[1].name}"
                         + (f"[{new[2].name}]" if new[2] is not None else ""))
        elif op == 7:  # drop a key
            key = rng.choice(meta)[0]
            meta = [m for m in meta if m[0] != key]
            notes.append(f"drop {key}")
        elif op == 8:  # a tensor of another type, shape or name
            i = rng.randrange(len(tensors))
            name, shape, ttype = tensors[i]
            what = rng.randrange(4)
            if what == 0:
                ttype = rng.choice(_TYPES)
            elif what == 1:  # (small: the point is the mismatch, not a big file)
                shape = tuple(rng.choice([0, 1, 2, 8, 32, 64, 256]) for _ in
                              range(rng.choice([1, 2, 3, 4])))
                if math.prod(shape) > 1 << 16:
                    shape = shape[:2]
            elif what == 2:
                name = rng.choice(["blk.5.attn_q.weight", "blk.0.attn_q.bias", "output.weight",
                                   "foo", "blk.0.attn_q.weight\n", "blk.00.ffn_up.weight",
                                   "blk.99999999999999999999.attn_k.weight", ""])
            else:
                del tensors[i]
                notes.append(f"drop tensor {name}")
                continue
            tensors[i] = (name, shape, ttype)
            notes.append(f"tensor {name!r} {shape} {ttype}")
        else:  # reorder
            rng.shuffle(meta)
            notes.append("shuffle keys")
    return meta, tensors, "; ".join(notes)


def _typed_json(rng: random.Random, obj: dict[str, Any], keys: list[str]) -> tuple[dict, str]:
    obj = json.loads(json.dumps(obj))
    key = rng.choice(keys)
    v = rng.choice(_json_values(rng))
    if rng.random() < 0.15:
        obj.pop(key, None)
        return obj, f"drop {key}"
    obj[key] = v
    return obj, f"{key}={str(v)[:40]}"


# ------------------------------------------------------------------------ the fuzzers


def fuzz_gguf(fz: Fuzz, n_bytes: int, n_typed: int) -> None:
    valid = tiny.write_tiny_gguf(fz.tmp / "valid.gguf").read_bytes()
    # the header is everything before the (aligned) data section: scan the valid file once
    from quantport.formats.gguf_file import scan_gguf

    header_end = min(t.offset for t in scan_gguf(fz.tmp / "valid.gguf").tensors)
    for _ in range(n_bytes):
        data, note = mutate_bytes(fz.rng, valid, header_end)
        fz.run(f"gguf bytes {note}", fz.write(data, ".gguf"), tiny.read_gguf_source)
    for _ in range(n_typed):
        meta, tensors, note = mutate_gguf_typed(fz.rng)
        try:
            data = tiny.tiny_gguf_bytes(meta, tensors)
        except (struct.error, ValueError, OverflowError, QuantportError):
            continue  # a value its type cannot hold, or a shape no block size divides
        fz.run(f"gguf typed {note}", fz.write(data, ".gguf"), tiny.read_gguf_source)


def fuzz_safetensors(fz: Fuzz, n_bytes: int, n_typed: int) -> None:
    p0 = tiny.write_tiny_safetensors(fz.tmp / "valid.safetensors")
    valid = p0.read_bytes()
    (n,) = struct.unpack_from("<Q", valid)
    header = json.loads(valid[8 : 8 + n])
    body = valid[8 + n :]
    for _ in range(n_bytes):
        data, note = mutate_bytes(fz.rng, valid, 8 + n)
        fz.run(f"safetensors bytes {note}", fz.write(data, ".safetensors"), tiny.read_safetensors)
    names = [k for k in header if k != "__metadata__"]
    for _ in range(n_typed):
        h = json.loads(json.dumps(header))
        op = fz.rng.randrange(4)
        if op == 0:
            h["__metadata__"], note = rng_value(fz.rng), "__metadata__"
            note += f"={str(h['__metadata__'])[:40]}"
        elif op == 1:
            m = h["__metadata__"]
            m[fz.rng.choice(list(m) + ["new"])] = rng_value(fz.rng)
            note = f"__metadata__ value {m}"[:80]
        elif op == 2:
            name = fz.rng.choice(names)
            h[name], note = _typed_json(fz.rng, h[name], ["dtype", "shape", "data_offsets"])
            note = f"{name}: {note}"
        else:
            name = fz.rng.choice(names)
            e = h[name]
            field = fz.rng.choice(["shape", "data_offsets"])
            if e[field]:
                i = fz.rng.randrange(len(e[field]))
                e[field][i] = fz.rng.choice(_json_values(fz.rng)[:14])
            note = f"{name}.{field}={e[field]}"[:80]
        raw = json.dumps(h).encode()
        data = struct.pack("<Q", len(raw)) + raw + body
        fz.run(f"safetensors typed {note}", fz.write(data, ".safetensors"),
               tiny.read_safetensors)


def rng_value(rng: random.Random) -> Any:
    return rng.choice(_json_values(rng))


_CONFIG_KEYS = list(tiny.tiny_config()) + ["head_dim", "rope_parameters", "type_vocab_size",
                                            "_name_or_path", "pad_token_id", "layer_norm_eps",
                                            "position_embedding_type"]


def fuzz_config(fz: Fuzz, n_typed: int) -> None:
    d = tiny.write_tiny_checkpoint(fz.tmp / "ckpt")
    cfg = tiny.tiny_config()
    for _ in range(n_typed):
        c, note = _typed_json(fz.rng, cfg, _CONFIG_KEYS)
        if fz.rng.random() < 0.3:
            c, note2 = _typed_json(fz.rng, c, _CONFIG_KEYS)
            note += "; " + note2
        (d / "config.json").write_text(json.dumps(c))
        fz.run(f"config.json {note}", d, tiny.read_checkpoint)
    for _ in range(n_typed // 4):
        text, note = mutate_bytes(fz.rng, json.dumps(cfg).encode(), 10**9)
        (d / "config.json").write_bytes(text)
        fz.run(f"config.json bytes {note}", d, tiny.read_checkpoint)


def fuzz_imatrix(fz: Fuzz, n_bytes: int) -> None:
    for fmt in ("gguf", "dat"):
        valid = tiny.write_tiny_imatrix(fz.tmp / f"valid.{fmt}", fmt).read_bytes()
        if fmt == "gguf":
            from quantport.formats.gguf_file import scan_gguf

            header_end = min(t.offset for t in scan_gguf(fz.tmp / "valid.gguf").tensors)
        else:
            header_end = len(valid)
        for _ in range(n_bytes // 2):
            data, note = mutate_bytes(fz.rng, valid, header_end)
            fz.run(f"imatrix {fmt} bytes {note}", fz.write(data, f".{fmt}"),
                   tiny.read_imatrix_file)


def fuzz_imatrix_typed(fz: Fuzz, n_typed: int) -> None:
    valid = tiny.tiny_gguf_bytes(tiny.IMATRIX_META, tiny.IMATRIX_TENSORS, tiny.IMATRIX_DATA)
    tiny.read_imatrix_file(fz.write(valid, ".gguf"))  # the baseline is a valid imatrix
    for _ in range(n_typed):
        meta, tensors = list(tiny.IMATRIX_META), list(tiny.IMATRIX_TENSORS)
        data = dict(tiny.IMATRIX_DATA)
        i = fz.rng.randrange(len(tensors))
        name, shape, ttype = tensors[i]
        op = fz.rng.randrange(5)
        if op < 2:
            key, value, vtype, atype = fz.rng.choice(meta)
            new = fz.rng.choice(_gguf_values(fz.rng, value, vtype, atype))
            meta = tiny.replace_meta(key, *new, meta=meta)
            note = f"{key}={str(new[0])[:40]}:{new[1].name}"
        elif op == 2:
            key = fz.rng.choice(meta)[0]
            meta = [m for m in meta if m[0] != key]
            note = f"drop {key}"
        elif op == 3:  # counts or sums of another shape, type or value
            shape = tuple(fz.rng.choice([0, 1, 2, 3, 16, 32]) for _ in
                          range(fz.rng.choice([1, 2, 3])))
            ttype = fz.rng.choice(["F32", "F32", "F16", "Q8_0", "I32"])
            data.pop(name)
            if ttype == "F32":
                vals = [0.0, -1.0, 1e30, math.inf, math.nan, 2.0**63, 0.4, 0.5]
                data[name] = struct.pack(f"<{math.prod(shape)}f", *(
                    fz.rng.choice(vals) for _ in range(math.prod(shape))))
            note = f"tensor {name} {shape} {ttype}"
            tensors[i] = (name, shape, ttype)
        else:
            new_name = fz.rng.choice(["x.in_sum2", "blk.0.attn_q.weight.counts", ".counts",
                                      "blk.0.attn_q.weight", "é.in_sum2\n"])
            data[new_name] = data.pop(name)
            tensors[i] = (new_name, shape, ttype)
            note = f"rename {name} -> {new_name!r}"
        try:
            raw = tiny.tiny_gguf_bytes(meta, tensors, data)
        except (struct.error, ValueError, OverflowError, QuantportError):
            continue
        fz.run(f"imatrix typed {note}", fz.write(raw, ".gguf"), tiny.read_imatrix_file)


# ------------------------------------------------------------------------ the tests

# (gguf bytes, gguf typed, safetensors bytes, safetensors typed, config.json, imatrix bytes,
#  imatrix typed)
QUICK = (500, 350, 400, 400, 300, 500, 300)
SLOW_FACTOR = 10


def _fuzz_all(tmp_path: Path, seed: int, scale: int) -> Fuzz:
    fz = Fuzz(tmp_path, seed)
    gb, gt, sb, st, cf, im, it = (n * scale for n in QUICK)
    fuzz_gguf(fz, gb, gt)
    fuzz_safetensors(fz, sb, st)
    fuzz_config(fz, cf)
    fuzz_imatrix(fz, im)
    fuzz_imatrix_typed(fz, it)
    return fz


# dequantizing random blocks overflows now and then: numpy's warnings are not the point here
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fuzz_readers(tmp_path, traced):
    t0, c0 = time.perf_counter(), time.process_time()
    fz = _fuzz_all(tmp_path, seed=20240611, scale=1)
    fz.check()
    # the mutations must exercise the checks, not only the happy path
    assert fz.n >= 2000 and fz.refused > fz.n // 3, (fz.n, fz.refused)
    print(f"{fz.n} cases, {fz.refused} refused, {time.perf_counter() - t0:.1f} s "
          f"({time.process_time() - c0:.1f} s CPU)")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_readers_long(tmp_path, traced, seed):
    fz = _fuzz_all(tmp_path, seed=seed, scale=SLOW_FACTOR)
    fz.check()


def test_fuzz_harness_catches_escapes(tmp_path, traced):
    """The harness itself reports an escaping exception, a hang and an over-allocation."""
    fz = Fuzz(tmp_path, 0)
    p = fz.write(b"x", ".bin")
    fz.run("escape", p, lambda _: {}["k"])
    fz.run("refused", p, lambda _: (_ for _ in ()).throw(QuantportError("one line")))

    def hang(_: Path) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        while True:
            pass

    fz.run("hang", p, hang)
    fz.run("alloc", p, lambda _: bytearray(MEM_SLACK + 1024))
    kinds = sorted(k.split(" ")[0] for k in fz.failures)
    assert kinds == ["KeyError", "allocation", "hang"], fz.failures
    assert fz.refused == 1
