"""BERT encoders (``BertModel`` and its heads): GGUF ``bert``, WordPiece vocabulary.

llama.cpp: ``conversion/bert.py`` ``BertModel`` (set_gguf_parameters, filter_tensors, the
"phantom space" vocabulary), ``llama_model_bert::load_arch_hparams``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantport.architectures._base import B, F32, U32, Architecture, need
from quantport.errors import UnsupportedArchitectureError
from quantport.formats.gguf_writer import GGUFKV

__all__ = ["ARCH"]


def bert_hparams(cfg: Mapping[str, Any], where: str) -> list[GGUFKV]:
    """``TextModel.set_gguf_parameters`` + ``BertModel.set_gguf_parameters`` (the pooling type
    is added by the writer, from the checkpoint's sentence-transformers modules)."""
    if (
        cfg.get("hidden_act", "gelu") != "gelu"
        or cfg.get("position_embedding_type", "absolute") != "absolute"
    ):
        raise UnsupportedArchitectureError(
            f"{where}: bert with hidden_act {cfg.get('hidden_act')!r} / position_embedding_type "
            f"{cfg.get('position_embedding_type')!r}; llama.cpp's bert graph needs gelu and "
            "absolute positions"
        )
    return [
        # llama_model_bert::load_arch_hparams reads attention.layer_norm_epsilon (float)
        GGUFKV("bert.block_count", int(need(cfg, "num_hidden_layers", where)), U32),
        GGUFKV("bert.context_length", int(need(cfg, "max_position_embeddings", where)), U32),
        GGUFKV("bert.embedding_length", int(need(cfg, "hidden_size", where)), U32),
        GGUFKV("bert.feed_forward_length", int(need(cfg, "intermediate_size", where)), U32),
        GGUFKV("bert.attention.head_count", int(need(cfg, "num_attention_heads", where)), U32),
        GGUFKV("bert.attention.layer_norm_epsilon", float(cfg.get("layer_norm_eps", 1e-12)), F32),
        # an encoder: bidirectional attention (llama_model_base::load_hparams reads it as bool)
        GGUFKV("bert.attention.causal", False, B),
    ]


def bert_normalize(name: str) -> str | None:
    """``BertModel.filter_tensors``: strip ``bert.``, gamma/beta -> weight/bias, drop the MLM /
    NSP heads ("we are only using BERT for embeddings")."""
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    elif name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    return name


ARCH = Architecture(
    name="bert",
    hf_classes=("BertModel", "BertForMaskedLM", "BertForSequenceClassification"),
    model_types=("bert",),
    layer_prefix=r"(?:bert\.)?encoder\.layer\.(\d+)\.",
    layer_map=(
        ("attention.self.query.weight", "attn_q.weight"),
        ("attention.self.query.bias", "attn_q.bias"),
        ("attention.self.key.weight", "attn_k.weight"),
        ("attention.self.key.bias", "attn_k.bias"),
        ("attention.self.value.weight", "attn_v.weight"),
        ("attention.self.value.bias", "attn_v.bias"),
        ("attention.output.dense.weight", "attn_output.weight"),
        ("attention.output.dense.bias", "attn_output.bias"),
        ("attention.output.LayerNorm.weight", "attn_output_norm.weight"),
        ("attention.output.LayerNorm.bias", "attn_output_norm.bias"),
        ("intermediate.dense.weight", "ffn_up.weight"),
        ("intermediate.dense.bias", "ffn_up.bias"),
        ("output.dense.weight", "ffn_down.weight"),
        ("output.dense.bias", "ffn_down.bias"),
        ("output.LayerNorm.weight", "layer_output_norm.weight"),
        ("output.LayerNorm.bias", "layer_output_norm.bias"),
    ),
    global_map=(
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        ("embeddings.position_embeddings.weight", "position_embd.weight"),
        ("embeddings.token_type_embeddings.weight", "token_types.weight"),
        ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
        ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
    ),
    linear=r"encoder\.layer\.\d+\..*(query|key|value|dense)\.weight$",
    causal=False,
    buffers=("embeddings.position_ids",),
    # convert_hf_to_gguf.py BertModel: "we are only using BERT for embeddings so we don't need
    # the pooling layer"
    gguf_drop=("pooler.dense.weight", "pooler.dense.bias"),
    tokenizer=("bert",),
    pooling=True,
    hparams=bert_hparams,
    normalize=bert_normalize,
    calibrated=True,  # GPTQ; SmoothQuant to ONNX (pipeline/calibrated.py _check_encoder)
)


#: the Linear layers of a BERT layer SmoothQuant smooths (the LayerNorm-fed ones: q/k/v, and the
#: MLP's first Linear); their scales cannot be folded into a post-LayerNorm encoder, so a writer
#: stores ``NAME`` + :data:`~quantport.architectures.SMOOTH_SUFFIX` (``pipeline/transforms.py``)
SMOOTHED = ("attention.self.query", "attention.self.key", "attention.self.value",
            "intermediate.dense")
