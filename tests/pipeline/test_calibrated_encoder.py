"""The calibration engine on BERT encoders (a tiny seeded BERT with MiniLM's tokenizer):
padded calibration sentences, the layer-by-layer forward, statistics over real tokens only,
SmoothQuant's unfolded scales keep the float model, GPTQ end to end through the CLI, and the
refusals (evaluation text, SmoothQuant into a writer that cannot store the input scales)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from quantport.errors import ConfigError
from quantport.models import ALIASES
from quantport.pipeline import layerwise
from quantport.pipeline.layerwise import (
    LayerwiseModel,
    Sentences,
    cache_key,
    calibration_inputs,
    calibration_sentences,
)
from quantport.pipeline.transforms import (
    INPUT_PREFIX,
    bert_groups,
    input_scale_hooks,
    smooth_layer,
)
from quantport.readers import open_path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (width 64) with seeded random weights and MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    model = BertModel(cfg)
    with torch.no_grad():  # LayerNorm weights away from 1 and an outlier channel, as trained
        for name, p in model.named_parameters():  # BERTs have (what smoothing is about)
            if "LayerNorm.weight" in name:
                p.copy_(0.5 + torch.rand_like(p))
                p[3] = 8.0
    out = tmp_path_factory.mktemp("bert") / "tiny-bert"
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(ALIASES["minilm"]() / name, out / name)
    return out


def _forward(model: LayerwiseModel, sents: Sentences, transform=None) -> torch.Tensor:
    """The float encoder's last hidden state, layer by layer (``transform(i, layer, h)`` may
    change a layer and return hooks to remove after its run)."""
    h = model.embed(sents)
    for i in range(model.n_layers):
        layer = model.load(i)
        hooks = transform(i, layer, h) if transform is not None else []
        h, _ = model.run(i, layer, h)
        for hd in hooks:
            hd.remove()
        model.unload(i)
    return h


def _pooled(h: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    m = torch.from_numpy(mask)[..., None].float()
    e = (h * m).sum(1) / m.sum(1)
    return e / e.norm(dim=1, keepdim=True)


def test_sentences_are_padded_lines_with_special_tokens(tiny_bert: Path) -> None:
    src = open_path(tiny_bert)
    s = calibration_inputs(src, samples=6, length=32)
    assert isinstance(s, Sentences) and s.shape[0] == 6 and s.shape[1] <= 32
    lengths = s.mask.sum(1)
    cls, sep = 101, 102  # MiniLM's [CLS], [SEP]
    assert (s.ids[:, 0] == cls).all()
    assert all(s.ids[k, n - 1] == sep for k, n in enumerate(lengths))  # kept when truncated
    assert (s.ids[s.mask == 0] == 0).all()  # [PAD]
    # the mask marks a prefix of every row
    assert all(s.mask[k, :n].all() and not s.mask[k, n:].any() for k, n in enumerate(lengths))


def test_sentences_stop_at_the_served_max_seq_length(tiny_bert: Path, tmp_path: Path) -> None:
    d = tmp_path / "st-bert"
    shutil.copytree(tiny_bert, d)
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    s = calibration_sentences(open_path(d), samples=6, length=32)
    assert s.shape[1] == 16 and (s.ids[:, 15][s.mask[:, 15] == 1] == 102).all()
    assert calibration_sentences(open_path(tiny_bert), samples=6, length=32).shape[1] > 16


def test_layer_by_layer_encoder_equals_transformers(tiny_bert: Path) -> None:
    from transformers import AutoModel

    src = open_path(tiny_bert)
    sents = calibration_sentences(src, samples=5, length=48)
    sents = Sentences(sents.ids.copy(), sents.mask.copy())
    sents.mask[1, 10:] = 0  # a short sentence among long ones: padding inside the batch
    sents.ids[1, 10:] = 0
    ours = _forward(LayerwiseModel(src), sents)
    full = AutoModel.from_pretrained(tiny_bert, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = full(input_ids=torch.from_numpy(sents.ids),
                   attention_mask=torch.from_numpy(sents.mask)).last_hidden_state
    real = torch.from_numpy(sents.mask).bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)


def test_statistics_ignore_padding(tiny_bert: Path) -> None:
    src = open_path(tiny_bert)
    sents = calibration_sentences(src, samples=6, length=48)
    assert (sents.mask == 0).any()  # the fixture text gives sentences of several lengths
    # the same sentences with other ids on the padding: the statistics must not move
    noisy = sents.ids.copy()
    rng = np.random.default_rng(0)
    noisy[sents.mask == 0] = rng.integers(1000, 30000, int((sents.mask == 0).sum()))
    got = []
    for ids in (sents.ids, noisy):
        model = LayerwiseModel(src)
        h = model.embed(Sentences(ids, sents.mask))
        layer = model.load(0)
        _, st = model.run(0, layer, h, collect=True, hessian=True, activations=True)
        got.append(st)
    for a, b in zip(got[0].groups, got[1].groups, strict=True):
        assert a.modules == b.modules and a.n == b.n == int(sents.mask.sum())
        np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a.abs_max, b.abs_max)
    assert [len(g.modules) for g in got[0].groups] == [3, 1, 1, 1]  # q/k/v share one input


def test_smoothing_keeps_the_float_embeddings_where_a_layernorm_fold_cannot(
        tiny_bert: Path) -> None:
    src = open_path(tiny_bert)
    sents = calibration_sentences(src, samples=4, length=48)
    model = LayerwiseModel(src)
    ref = _pooled(_forward(model, sents), sents.mask)
    chosen: list[dict[str, np.ndarray]] = []

    def smooth(i, layer, h):
        p = f"{model.prefix}{i}."
        _, st = model.run(i, layer, h, collect=True, hessian=False, activations=True)
        scales = smooth_layer(layer, {n[len(p):].removesuffix(".weight"): st.of(n).abs_max
                                      for n in model.weight_names(i, layer)}, alpha=0.5)
        chosen.append(scales)
        return input_scale_hooks(layer, scales)

    got = _pooled(_forward(model, sents, smooth), sents.mask)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    keys = {INPUT_PREFIX + g.linears[0] for g in bert_groups(None)}
    assert all(set(c) == keys for c in chosen)
    s = chosen[0][INPUT_PREFIX + "attention.self.query"]
    assert s.max() / s.min() > 2  # a real migration, not scales of ~1

    # the pre-norm fold (divide the LayerNorm) changes a post-norm BERT: the LayerNorm's output
    # is also the residual of the next sub-block
    def fold(i, layer, h):
        with torch.no_grad():
            s = torch.from_numpy(chosen[i][INPUT_PREFIX + "intermediate.dense"])
            ln = layer.attention.output.LayerNorm
            ln.weight.div_(s)
            ln.bias.div_(s)
            layer.intermediate.dense.weight.mul_(s.view(1, -1))
        return []

    folded = _pooled(_forward(model, sents, fold), sents.mask)
    assert float((folded - ref).abs().max()) > 1e-3


def test_cache_key_changes_with_settings_and_sentences(tiny_bert: Path) -> None:
    src = open_path(tiny_bert)
    s = calibration_sentences(src, samples=4, length=32)
    base = cache_key(src, s.array(), {"alpha": 0.5})
    assert cache_key(src, s.array(), {"alpha": 0.5}) == base
    assert cache_key(src, s.array(), {"alpha": 0.8}) != base
    shorter = Sentences(s.ids, s.mask.copy())
    shorter.mask[0, -1] = 0
    assert cache_key(src, shorter.array(), {"alpha": 0.5}) != base
    assert cache_key(src, calibration_sentences(src, samples=3, length=32).array(),
                     {"alpha": 0.5}) != base


def test_cache_key_changes_when_the_checkpoint_is_saved_again(tiny_bert: Path,
                                                              tmp_path: Path) -> None:
    """A checkpoint saved again at the same path with other weights (same config) got the
    old key, and a conversion quietly rounded with the other model's Hessians."""
    import shutil

    from safetensors.numpy import load_file, save_file

    d = tmp_path / "bert"
    shutil.copytree(tiny_bert, d)
    src = open_path(d)
    s = calibration_sentences(src, samples=4, length=32)
    base = cache_key(src, s.array(), {"alpha": 0.5})
    assert cache_key(open_path(d), s.array(), {"alpha": 0.5}) == base
    f = next(d.glob("*.safetensors"))
    weights = load_file(f)
    name = next(k for k in weights if k.endswith("query.weight"))
    weights[name] = weights[name] * 2
    save_file(weights, f, metadata={"format": "pt"})
    assert cache_key(open_path(d), s.array(), {"alpha": 0.5}) != base


def test_bad_calibration_text_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    src = open_path(tiny_bert)
    with pytest.raises(ConfigError, match="is the evaluation text"):
        calibration_sentences(src, layerwise.EVALUATION_TEXT, 4, 32)
    copy = tmp_path / "copy.raw"
    copy.write_bytes(layerwise.EVALUATION_TEXT.read_bytes())
    with pytest.raises(ConfigError, match="is the evaluation text"):
        calibration_sentences(src, copy, 4, 32)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is empty"):
        calibration_sentences(src, empty, 4, 32)
    short = tmp_path / "short.txt"
    short.write_text("= Heading with many words in it , really =\nfew words\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no line of at least 8 words"):
        calibration_sentences(src, short, 4, 32)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        calibration_sentences(src, layerwise.DEFAULT_CALIBRATION_TEXT, 4, 512)


def test_cli_gptq_and_smoothquant_on_an_encoder(tiny_bert: Path, tmp_path: Path,
                                                         calib_cache: Path) -> None:
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    from quantport.cli.main import cli

    runner = CliRunner()
    calib = ["--calib-samples", "8", "--calib-len", "32"]
    out = tmp_path / "gptq-onnx"
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "onnx", "--quant", "w8a8",
                              "--method", "gptq", *calib, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert any(p.is_dir() for p in calib_cache.iterdir())  # the statistics were cached
    # ONNX Runtime runs it and its embeddings follow the float model's
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["The quick brown fox jumps over the lazy dog .", "Hello there", "A"]
    enc = tok(texts, padding=True, return_tensors="np")
    feed = {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["sentence_embedding"], feed)
    with torch.inference_mode():
        h = AutoModel.from_pretrained(tiny_bert).eval()(
            **{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    ref = _pooled(h, feed["attention_mask"]).numpy()
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1)
    assert cos.min() > 0.99

    st = tmp_path / "gptq-st"
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "safetensors", "--quant",
                              "w8-channel-sym", "--method", "gptq", *calib, "-o", str(st)])
    assert res.exit_code == 0, res.output
    from safetensors import safe_open

    with safe_open(st / "model.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["quantport_recipe"])
    assert meta["method"] == "gptq" and meta["calib"]["samples"] == 8

    # SmoothQuant's scales cannot be folded into BERT's LayerNorms: ONNX stores them as
    # NAME.input_smooth and multiplies each smoothed Linear's input by them; compressed-tensors
    # has nowhere to store them, so safetensors is refused in one line before any work
    sq = tmp_path / "sq-onnx"
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "onnx", "--quant", "w8a8",
                              "--method", "smoothquant", *calib, "-o", str(sq)])
    assert res.exit_code == 0, res.output
    import onnx

    graph = onnx.load(str(sq / "model.onnx"), load_external_data=False).graph
    smooth = [i for n in graph.node if n.op_type == "Mul" for i in n.input
              if i.endswith(".input_smooth")]
    assert len(smooth) == 4 * 2  # q, k, v and intermediate.dense in each of 2 layers
    sess = ort.InferenceSession(str(sq / "model.onnx"), providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["sentence_embedding"], feed)
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1)
    assert cos.min() > 0.99
    # per-token activations (--act-scheme token): one QuantizeLinear per distinct input,
    # recorded in the recipe, and the embeddings follow the float model's
    tok_dir = tmp_path / "sq-onnx-token"
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "onnx", "--quant", "w8a8",
                              "--act-scheme", "token", "--method", "smoothquant", *calib,
                              "-o", str(tok_dir)])
    assert res.exit_code == 0, res.output
    model = onnx.load(str(tok_dir / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    # per layer 6 Linear layers on 6 distinct inputs: the smoothed q, k and v each multiply
    # the shared input by their own input_smooth first
    assert ops.count("MatMulIntegerToFloat") == 6 * 2 and "DynamicQuantizeLinear" not in ops
    assert ops.count("QuantizeLinear") == 6 * 2
    recipe = json.loads({p.key: p.value for p in model.metadata_props}["quantport_recipe"])
    assert recipe["act_scheme"] == "token" and recipe["method"] == "smoothquant"
    sess = ort.InferenceSession(str(tok_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (emb_tok,) = sess.run(["sentence_embedding"], feed)
    cos_tok = (emb_tok * ref).sum(1) / np.linalg.norm(emb_tok, axis=1)
    assert cos_tok.min() > 0.99
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "safetensors", "--quant",
                              "w8a8", "--act-scheme", "tensor", "-o", str(tmp_path / "st-t")])
    assert res.exit_code == 2 and "quantizes activations per token" in res.output
    assert not (tmp_path / "st-t").exists()
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "safetensors", "--quant",
                              "w8a8", "--method", "smoothquant", *calib, "-o",
                              str(tmp_path / "sq-st")])
    assert res.exit_code == 1
    assert "post-LayerNorm bert encoder" in res.output and "input_smooth" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "sq-st").exists()
    res = runner.invoke(cli, ["convert", str(tiny_bert), "--to", "safetensors", "--quant",
                              "w4-g32-sym", "--method", "awq", *calib, "-o",
                              str(tmp_path / "awq")])
    assert res.exit_code == 1 and "AWQ's scale groups" in res.output


def test_encoder_gptq_cache_hit_gives_the_same_file(tiny_bert: Path, tmp_path: Path,
                                                     calib_cache: Path) -> None:
    from quantport.pipeline import convert, make_recipe

    src = open_path(tiny_bert)
    recipe = make_recipe("safetensors", "w8-channel-sym", method="gptq", calib_samples=8,
                         calib_len=32)
    first = convert(src, recipe, tmp_path / "a", threads=1)
    second = convert(src, recipe, tmp_path / "b", threads=1)
    assert not first.calibration.cached and second.calibration.cached
    assert first.calibration.windows == second.calibration.windows
    assert first.calibration.windows[0] == 8  # sentences, not windows
    assert first.calibration.errors and all(e >= 0 for e in first.calibration.errors.values())
    assert ((tmp_path / "a" / "model.safetensors").read_bytes()
            == (tmp_path / "b" / "model.safetensors").read_bytes())
