"""Hugging Face tokenizer files -> GGUF tokenizer metadata (``tokenizer.ggml.*``).

The reverse of :mod:`quantport.readers.tokenizer`. It reproduces what llama.cpp's converter
writes (vendored llama.cpp of llama-cpp-python 0.3.36):

* ``conversion/base.py`` ``TextModel.get_vocab_base``: tokens in id order (ids missing from the
  vocabulary become ``[PAD<i>]`` UNUSED tokens up to ``config.vocab_size``); added tokens are
  CONTROL when ``special`` or when they look special (``<|...|>``...), USER_DEFINED otherwise;
  everything else NORMAL. Non-normalized added tokens are encoded and decoded once, as llama.cpp
  assumes pre-normalized added tokens.
* ``_set_vocab_sentencepiece`` / ``_set_vocab_llama_hf`` (SentencePiece, ``"llama"``: scores,
  token types, ``<0xXX>`` byte tokens; see :mod:`quantport.readers.spm`), chosen per
  architecture as the converter's ``set_vocab`` chooses (:func:`vocab_from_hf`);
* ``_set_vocab_gpt2`` (byte-level BPE, ``tokenizer.ggml.model = "gpt2"``) and
  ``BertModel.set_vocab`` (WordPiece, ``"bert"``: the "phantom space" rewrite -- ``##x`` ->
  ``x``, other normal tokens get a leading U+2581, control tokens stay as they are).
* ``gguf.SpecialVocab`` (gguf-py ``vocab.py``) for merges (pair lists joined with a space, literal
  spaces encoded as U+0120), special token ids, ``add_*_token`` flags and the chat template; it is
  used as is, so these follow llama.cpp by construction.

``tokenizer.ggml.pre`` is decided as llama.cpp's converter decides it (``conversion/base.py``
``TextModel.get_vocab_base_pre``): sha256 of ``str()`` of the token ids that
``AutoTokenizer.from_pretrained(dir).encode()`` gives for a fixed probe text, looked up in the
converter's table (copied below). The ``pre_tokenizer`` structure of ``tokenizer.json`` is not
consulted, as llama.cpp does not consult it: transformers re-serializes tokenizers (a SmolLM2
tokenizer saved through ``GPT2Tokenizer`` has a bare ``ByteLevel`` pre-tokenizer, still hashing
as ``smollm``). A hash the table does not know is refused for BPE, as llama.cpp refuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantport.errors import ConfigError
from quantport.formats.gguf_writer import GGUFKV, GGUFValueType
from quantport.readers.spm import CONTROL, NORMAL, UNUSED, USER_DEFINED  # gguf-py TokenType

__all__ = [
    "SUPPORTED_PRE_TOKENIZERS",
    "GGUFVocab",
    "detect_pre_tokenizer",
    "probe_hash",
    "vocab_from_hf",
    "vocab_metadata",
]

log = logging.getLogger(__name__)


# get_vocab_base_pre() in conversion/base.py of llama-cpp-python 0.3.36's vendored llama.cpp
# (generated there by convert_hf_to_gguf_update.py): chkhsh -> tokenizer.ggml.pre. The converter
# tests every hash with its own `if` (no elif), so where a hash is listed twice the later name
# wins and is the one kept here: 0876d13b... is "jina-v2-en" (not "bert-bge"), b6dc8df9... is
# "olmo" (not "mpt").
_CHKHSH = {
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
    "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664": "hunyuan",
    "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6": "hunyuan-dense",
    "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c": "hy_v4",
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon-h1",
    "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86": "falcon-h1",
    "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896": "falcon-h1",
    "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b": "falcon-h1",
    "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890": "kimi-k2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f": "qwen35",
    "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273": "grok-2",
    "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df": "jina-v2-de",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7": "lfm2",
    "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252": "gemma4",
    "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed": "spark2_5",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1": "tiny_aya",
    "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e": "cohere2moe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
    "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d": "jina-v5-nano",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
    "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a": "jais-2",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450": "chameleon",
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f": "superbpe",
    "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15": "trillion",
    "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224": "bailingmoe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",
    "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf": "a.x-4.0",
    "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4": "midm-2.0",
    "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51": "lfm2",
    "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb": "exaone4",
    "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756": "mellum",
    "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152": "modern-bert",
    "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df": "afmoe",
    "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206": "bailingmoe2",
    "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e": "granite-docling",
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",
    "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665": "kormo",
    "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1": "youtu",
    "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91": "solar-open",
    "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f": "exaone-moe",
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",
    "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d": "joyai-llm",
    "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869": "kanana2",
    "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015": "f2llmv2",
    "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57": "sarvam-moe",
    "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af": "talkie",
    "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4": "minicpm5",
    "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60": "granite-embed-multi-97m",
    "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669": "granite-embed-multi-311m",
    "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d": "mellum2",
    "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac": "laguna",
    "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd": "ufakzeka",
}

#: every ``tokenizer.ggml.pre`` llama.cpp's converter can write (the values of its table).
SUPPORTED_PRE_TOKENIZERS = tuple(sorted(set(_CHKHSH.values())))

# the probe text of get_vocab_base_pre() (conversion/base.py), verbatim
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


@dataclass
class GGUFVocab:
    """Everything the GGUF needs about a tokenizer.

    Attributes:
        model: ``tokenizer.ggml.model`` (``"gpt2"``, ``"bert"`` or ``"llama"``: SentencePiece).
        pre: ``tokenizer.ggml.pre``.
        tokens: token strings in id order (already in llama.cpp's form).
        token_types: gguf ``TokenType`` per token.
        merges: BPE merges as ``"a b"`` strings (empty for WordPiece).
        special_ids: ``bos``/``eos``/``unk``/``sep``/``pad``/``cls``/``mask`` (+ ``eot``...) ids.
        add_special: ``add_bos``/``add_eos``/``add_sep`` flags (keys without ``add_``/``_token``).
        chat_template: a template string, a list of ``{"name", "template"}`` or ``None``.
        token_type_count: BERT segment count (``tokenizer.ggml.token_type_count``), else ``None``.
        scores: ``tokenizer.ggml.scores`` (SentencePiece), else ``None``.
        add_space_prefix: ``tokenizer.ggml.add_space_prefix`` when the converter writes it.
        normalizer: ``tokenizer.ggml.normalizer.lowercase`` / ``.strip_accents`` (keys
            ``lowercase``, ``strip_accents``) read from ``tokenizer.json``'s normalizer.
    """

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None
    token_type_count: int | None = None
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    normalizer: dict[str, bool] = field(default_factory=dict)


def _write_files(d: Path, files: Mapping[str, str], config: Mapping[str, Any] | None) -> None:
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    if config is not None and not (d / "config.json").exists():
        # AutoTokenizer falls back on config.json's model_type without a tokenizer_class
        (d / "config.json").write_text(json.dumps(dict(config)), encoding="utf-8")


def probe_hash(
    tokenizer_files: Mapping[str, str],
    config: Mapping[str, Any] | None = None,
    *,
    model_dir: Path | None = None,
) -> str:
    """llama.cpp's ``chkhsh`` of a tokenizer, computed as ``get_vocab_base_pre`` computes it.

    ``sha256(str(AutoTokenizer.from_pretrained(dir_model).encode(chktxt)))``: transformers'
    tokenizer, not ``tokenizer.json`` alone (the ``tokenizer_class`` may rebuild the
    pre-tokenizer), and ``encode()`` adds special tokens. When transformers cannot load the
    tokenizer at all (llama.cpp's converter would stop there), ``tokenizer.json`` is hashed
    through ``tokenizers`` instead, with a warning.

    Args:
        tokenizer_files: file name -> text (``tokenizer.json``, ``tokenizer_config.json``...).
        config: ``config.json``, written next to the files when ``model_dir`` is not given.
        model_dir: the checkpoint directory, if it holds these files.
    """
    try:
        from transformers import AutoTokenizer

        if model_dir is not None and (model_dir / "tokenizer.json").is_file():
            ids = AutoTokenizer.from_pretrained(model_dir, local_files_only=True).encode(_CHKTXT)
        else:
            with tempfile.TemporaryDirectory(prefix="quantport-probe-") as tmp:
                _write_files(Path(tmp), tokenizer_files, config)
                tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
            ids = tok.encode(_CHKTXT)
    except Exception as exc:  # any failure to load: hash tokenizer.json itself
        from tokenizers import Tokenizer

        log.warning(
            "transformers cannot load the tokenizer (%s: %s); hashing tokenizer.json with "
            "tokenizers for llama.cpp's pre-tokenizer name",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        raw = Tokenizer.from_str(tokenizer_files["tokenizer.json"])
        raw.no_padding()
        raw.no_truncation()
        ids = raw.encode(_CHKTXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def detect_pre_tokenizer(
    tokenizer_files: Mapping[str, str],
    config: Mapping[str, Any] | None = None,
    *,
    model_dir: Path | None = None,
    where: str = "tokenizer.json",
) -> str:
    """``tokenizer.ggml.pre`` of a byte-level BPE tokenizer, as llama.cpp's converter writes it.

    Port of ``get_vocab_base_pre`` (``conversion/base.py``): the probe hash
    (:func:`probe_hash`) looked up in the converter's table; the ``pre_tokenizer`` structure
    of ``tokenizer.json`` plays no part, as in llama.cpp.

    Args:
        tokenizer_files: file name -> text (``tokenizer.json`` required).
        config: ``config.json``.
        model_dir: the checkpoint directory, if it holds these files.
        where: file name for error messages.

    Raises:
        ConfigError: a hash llama.cpp's table does not know (``get_vocab_base_pre`` raises
            ``NotImplementedError("BPE pre-tokenizer was not recognized ...")`` then).
    """
    chkhsh = probe_hash(tokenizer_files, config, model_dir=model_dir)
    pre = _CHKHSH.get(chkhsh)
    if pre is None:
        raise ConfigError(
            f"{where}: BPE pre-tokenizer was not recognized: its llama.cpp probe hash {chkhsh} "
            "is not in get_vocab_base_pre() of llama.cpp's convert_hf_to_gguf.py (llama.cpp "
            "refuses it too; only tokenizers llama.cpp knows can be written to GGUF)"
        )
    return pre


def _looks_special(text: str) -> bool:
    # TextModel.does_token_look_special (conversion/base.py)
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _base_vocab(tok: Any, tj: Mapping[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Port of TextModel.get_vocab_base() on a ``tokenizers.Tokenizer``."""
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= vocab_size:
        raise ConfigError(
            f"tokenizer has token id {max(vocab.values())} but config.json vocab_size is "
            f"{vocab_size}; fix vocab_size"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        token = reverse[i]
        if i in added:
            a = added[i]
            if not a.get("normalized", True):
                # "The tokenizer in llama.cpp assumes the CONTROL and USER_DEFINED tokens are
                # pre-normalized": round-trip non-normalized ones through the tokenizer
                before = token
                token = tok.decode(
                    tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False
                )
                if token != before:
                    log.info("%r is encoded and decoded back to %r", before, token)
            if a.get("special") or _looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")  # "pre-normalize user-defined spaces"
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types


def _special_vocab(
    files: Mapping[str, str], model_dir: Path | None, n_vocab: int, load_merges: bool
) -> Any:
    """Run gguf-py's SpecialVocab, as the converter's vendored gguf-py has it
    (:mod:`quantport.readers._special_vocab`), on the checkpoint directory (or on the files in a
    temp dir)."""
    from quantport.readers._special_vocab import SpecialVocab

    if model_dir is not None and any(
        (model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")
    ):
        return SpecialVocab(model_dir, load_merges=load_merges, n_vocab=n_vocab)
    with tempfile.TemporaryDirectory(prefix="quantport-vocab-") as tmp:
        _write_files(Path(tmp), files, None)
        return SpecialVocab(tmp, load_merges=load_merges, n_vocab=n_vocab)


def _normalizer(sv: Any) -> dict[str, bool]:
    # SpecialVocab.add_to_gguf: add_normalizer_lowercase / add_normalizer_strip_accents when set
    flags = {"lowercase": sv.normalizer_lowercase, "strip_accents": sv.normalizer_strip_accents}
    return {k: bool(v) for k, v in flags.items() if v is not None}


def _json_file(files: Mapping[str, str], model_dir: Path | None, name: str) -> Any:
    """A JSON file of the checkpoint (from ``files``, else from ``model_dir``), or ``None``."""
    text = files.get(name)
    if text is None and model_dir is not None and (model_dir / name).is_file():
        text = (model_dir / name).read_text(encoding="utf-8")
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{name}: invalid JSON ({exc}); fix or regenerate the file") from None


def _spm_result(
    tokens: list[str], scores: list[float], types: list[int], files: Mapping[str, str],
    model_dir: Path | None, add_space_prefix: bool | None,
) -> GGUFVocab:
    # _set_vocab_sentencepiece / _set_vocab_llama_hf: pre "default", SpecialVocab without merges
    sv = _special_vocab(files, model_dir, len(tokens), load_merges=False)
    return GGUFVocab(
        "llama",
        "default",
        tokens,
        types,
        [],
        dict(sv.special_token_ids),
        dict(sv.add_special_token),
        sv.chat_template,
        scores=scores,
        add_space_prefix=add_space_prefix,
        normalizer=_normalizer(sv),
    )


def vocab_from_hf(
    tokenizer_files: Mapping[str, str],
    config: Mapping[str, Any],
    *,
    arch: str,
    model_dir: Path | None = None,
    tokenizer_model: bytes | None = None,
) -> GGUFVocab:
    """Build the GGUF vocabulary of a Hugging Face tokenizer, as llama.cpp's converter would.

    The tokenizer model follows the converter's ``set_vocab`` of the GGUF architecture:

    * ``"llama"`` (Llama, Mistral; ``LlamaModel.set_vocab``): SentencePiece from
      ``tokenizer.model`` (``"llama"``); else a byte-fallback BPE ``tokenizer.json``
      (``_set_vocab_llama_hf``, ``"llama"``); else byte-level BPE (``"gpt2"``).
      ``tokenizer_config.json``'s ``add_prefix_space`` becomes ``add_space_prefix``.
    * ``"gemma3"`` (``Gemma3Model.set_vocab``): ``tokenizer.model`` with
      ``add_space_prefix = false``, else ``"gpt2"``.
    * ``"phi3"`` (``Phi3MiniModel.set_vocab``): ``"gpt2"`` when ``tokenizer_class`` is
      ``GPT2Tokenizer`` (Phi-4), else ``tokenizer.model`` (required).
    * ``"bert"``: WordPiece (``"bert"``).
    * any other (``"qwen2"``, ``"qwen3"``...; ``Qwen2Model.set_vocab``): ``tokenizer.model`` if
      present, else ``"gpt2"``.

    Args:
        tokenizer_files: file name -> text (``tokenizer.json``, ``tokenizer_config.json``,
            ``special_tokens_map.json``, ``added_tokens.json`` when present).
        config: the model's ``config.json`` (``vocab_size``, ``type_vocab_size``).
        arch: the GGUF architecture (``general.architecture``; ``"mistral"`` is taken as
            ``"llama"``, as llama.cpp writes it).
        model_dir: the checkpoint directory, if any (``tokenizer.model``, ``added_tokens.json``
            and ``chat_template.jinja`` are read from it).
        tokenizer_model: the bytes of ``tokenizer.model`` when there is no ``model_dir``.

    Returns:
        The vocabulary.

    Raises:
        ConfigError: no usable tokenizer file, a tokenizer model that does not fit ``arch``,
            or a BPE pre-tokenizer llama.cpp's converter does not recognise.
        FormatError: a ``tokenizer.model`` that is not a SentencePiece model.
    """
    from quantport.readers import spm

    # quantport architecture names whose GGUF architecture (and converter class) is llama's:
    # convert_hf_to_gguf.py registers MistralForCausalLM as a LlamaModel
    arch = {"mistral": "llama"}.get(arch, arch)
    if arch == "bert":
        return _vocab_from_tokenizer_json(tokenizer_files, config, arch=arch, model_dir=model_dir)
    if tokenizer_model is None and model_dir is not None and (model_dir / "tokenizer.model").is_file():
        tokenizer_model = (model_dir / "tokenizer.model").read_bytes()
    tc = _json_file(tokenizer_files, model_dir, "tokenizer_config.json") or {}
    if not isinstance(tc, dict):
        raise ConfigError("tokenizer_config.json: not a JSON object; fix or regenerate the file")
    vocab_size = config.get("vocab_size")
    vocab_size = int(vocab_size) if vocab_size else None

    def from_model(flavor: str, add_space_prefix: bool | None) -> GGUFVocab:
        assert tokenizer_model is not None
        added = _json_file(tokenizer_files, model_dir, "added_tokens.json")
        tj = _json_file(tokenizer_files, model_dir, "tokenizer.json") if flavor == "phi3" else None
        tokens, scores, types = spm.sentencepiece_vocab(
            tokenizer_model, vocab_size, added_tokens=added if isinstance(added, dict) else None,
            tokenizer_config=tc, tokenizer_json=tj if isinstance(tj, dict) else None,
            flavor=flavor,  # type: ignore[arg-type]
        )
        return _spm_result(tokens, scores, types, tokenizer_files, model_dir, add_space_prefix)

    if arch == "phi3":
        if tc.get("tokenizer_class") == "GPT2Tokenizer":
            return _vocab_from_tokenizer_json(tokenizer_files, config, arch=arch, model_dir=model_dir)
        if tokenizer_model is None:
            # Phi3MiniModel.set_vocab: "Error: Missing tokenizer.model"
            raise ConfigError("no tokenizer.model in the checkpoint; llama.cpp's converter needs "
                              "it for Phi-3 (copy the original checkpoint's tokenizer.model)")
        return from_model("phi3", None)
    if arch in ("gemma3", "gemma", "gemma2"):
        if tokenizer_model is not None:
            return from_model("llama", False if arch == "gemma3" else None)
        return _vocab_from_tokenizer_json(tokenizer_files, config, arch=arch, model_dir=model_dir)
    if arch != "llama":
        # Qwen2Model.set_vocab: _set_vocab_sentencepiece, else _set_vocab_gpt2
        if tokenizer_model is not None:
            return from_model("llama", None)
        return _vocab_from_tokenizer_json(tokenizer_files, config, arch=arch, model_dir=model_dir)

    # LlamaModel.set_vocab (conversion/llama.py)
    prefix = tc.get("add_prefix_space")
    prefix = bool(prefix) if prefix is not None else None
    if tokenizer_model is not None:
        v = from_model("llama", prefix)
    else:
        tj = _json_file(tokenizer_files, model_dir, "tokenizer.json")
        if isinstance(tj, dict) and spm.is_spm_tokenizer_json(tj):
            tokens, scores, types = spm.llama_hf_vocab(tokenizer_files, model_dir)
            v = _spm_result(tokens, scores, types, tokenizer_files, model_dir, prefix)
        else:
            v = _vocab_from_tokenizer_json(tokenizer_files, config, arch=arch, model_dir=model_dir)
            v.add_space_prefix = prefix
    if vocab_size == 32016:
        # "Apply to CodeLlama only": a SpecialVocab with prefix/suffix/middle/eot set to
        # 32007..32010; GGUFWriter has no add_{prefix,suffix,middle}_token_id, so SpecialVocab
        # skips those ("No handler") and only eot is written
        v.special_ids["eot"] = 32010
    if vocab_size == 49152:
        v.add_special["bos"] = False  # "Apply to granite small models only"
    return v


def _vocab_from_tokenizer_json(
    tokenizer_files: Mapping[str, str],
    config: Mapping[str, Any],
    *,
    arch: str,
    model_dir: Path | None = None,
) -> GGUFVocab:
    """Byte-level BPE (``gpt2``) or WordPiece (``bert``) from ``tokenizer.json``."""
    from tokenizers import Tokenizer

    text = tokenizer_files.get("tokenizer.json")
    if text is None:
        raise ConfigError(
            "no tokenizer.json in the checkpoint; quantport builds GGUF vocabularies from "
            "tokenizer.json or a SentencePiece tokenizer.model (copy the original checkpoint's "
            "tokenizer files, or save the tokenizer with transformers to create tokenizer.json)"
        )
    try:
        tj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge numbers, deep nesting
        raise ConfigError(f"tokenizer.json: invalid JSON ({exc}); fix or regenerate the file") from None
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise ConfigError("tokenizer.json: no 'model' object; fix or regenerate the file")
    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:  # the tokenizers library raises a bare Exception
        raise ConfigError(
            f"tokenizer.json: the tokenizers library cannot load it ({str(exc)[:200]}); fix or "
            "regenerate the file"
        ) from None
    # tokenizer.json may carry padding/truncation settings (MiniLM pads to 128); AutoTokenizer's
    # encode() used by llama.cpp's converter does not apply them
    tok.no_padding()
    tok.no_truncation()
    kind = (tj.get("model") or {}).get("type")
    vocab_size = int(config.get("vocab_size") or tok.get_vocab_size(with_added_tokens=True))
    tokens, types = _base_vocab(tok, tj, vocab_size)
    if arch == "bert":
        if kind != "WordPiece":
            raise ConfigError(
                f"tokenizer.json: model type {kind!r} for a BERT model; expected WordPiece"
            )
        # BertModel.set_vocab: "convert to phantom space vocab"
        tokens = [
            t if ty == CONTROL else t[2:] if t.startswith("##") else "\u2581" + t
            for t, ty in zip(tokens, types, strict=True)
        ]
        sv = _special_vocab(tokenizer_files, model_dir, len(tokens), load_merges=False)
        # The WPM tokenizer ignores tokenizer.ggml.pre (llama-vocab.cpp sets
        # LLAMA_VOCAB_PRE_TYPE_DEFAULT for LLAMA_VOCAB_TYPE_WPM); write the name llama.cpp's
        # converter would (BertModel.set_vocab -> get_vocab_base -> get_vocab_base_pre, e.g.
        # "jina-v2-en" for bert-base-uncased vocabularies). Where it would raise, "default":
        # the name cannot change how llama.cpp tokenizes WordPiece.
        pre = _CHKHSH.get(probe_hash(tokenizer_files, config, model_dir=model_dir), "default")
        return GGUFVocab(
            "bert",
            pre,
            tokens,
            types,
            [],
            dict(sv.special_token_ids),
            dict(sv.add_special_token),
            sv.chat_template,
            int(config.get("type_vocab_size", 1)),
            normalizer=_normalizer(sv),
        )
    if kind != "BPE":
        raise ConfigError(
            f"tokenizer.json: model type {kind!r} is not supported for {arch} without a "
            "tokenizer.model; supported: byte-level BPE (gpt2), SentencePiece (tokenizer.model, "
            "or a byte-fallback BPE tokenizer.json for llama)"
        )
    # _set_vocab_gpt2 -> get_vocab_base -> get_vocab_base_pre: by the probe hash only
    pre = detect_pre_tokenizer(tokenizer_files, config, model_dir=model_dir)
    sv = _special_vocab(tokenizer_files, model_dir, len(tokens), load_merges=True)
    if not sv.merges:
        raise ConfigError("tokenizer.json has no BPE merges; llama.cpp needs tokenizer.ggml.merges")
    return GGUFVocab(
        "gpt2",
        pre,
        tokens,
        types,
        list(sv.merges),
        dict(sv.special_token_ids),
        dict(sv.add_special_token),
        sv.chat_template,
        normalizer=_normalizer(sv),
    )


def vocab_metadata(v: GGUFVocab) -> list[GGUFKV]:
    """GGUF key/value pairs for a vocabulary, with the types llama-vocab.cpp reads.

    ``tokenizer.ggml.token_type`` is read raw as ``int*`` (INT32 array); ids are UINT32; the
    ``add_*`` flags are BOOL (gguf-py ``GGUFWriter.add_*`` helpers write the same types).
    """
    S, U32, I32, B, A = (
        GGUFValueType.STRING,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.BOOL,
        GGUFValueType.ARRAY,
    )
    kvs = [GGUFKV("tokenizer.ggml.model", v.model, S), GGUFKV("tokenizer.ggml.pre", v.pre, S)]
    kvs.append(GGUFKV("tokenizer.ggml.tokens", v.tokens, A, S))
    if v.scores is not None:
        # GGUFWriter.add_token_scores: FLOAT32 array, between the tokens and their types
        kvs.append(GGUFKV("tokenizer.ggml.scores", v.scores, A, GGUFValueType.FLOAT32))
    kvs.append(GGUFKV("tokenizer.ggml.token_type", v.token_types, A, I32))
    if v.token_type_count is not None:
        kvs.append(GGUFKV("tokenizer.ggml.token_type_count", v.token_type_count, U32))
    if v.merges:
        kvs.append(GGUFKV("tokenizer.ggml.merges", v.merges, A, S))
    # gguf-py Keys.Tokenizer names (note llama.cpp's spelling "seperator"), for the types the
    # vendored GGUFWriter has an add_<type>_token_id for: SpecialVocab.add_to_gguf skips the
    # others ("No handler for special token type ..."), cls among them
    id_keys = {
        "bos": "bos_token_id",
        "eos": "eos_token_id",
        "unk": "unknown_token_id",
        "sep": "seperator_token_id",
        "pad": "padding_token_id",
        "mask": "mask_token_id",
        "eot": "eot_token_id",
        "eom": "eom_token_id",
    }
    for typ, tid in v.special_ids.items():
        if typ in id_keys:
            kvs.append(GGUFKV(f"tokenizer.ggml.{id_keys[typ]}", int(tid), U32))
        else:
            log.debug("no GGUF key for special token type %s (id %d); skipped", typ, tid)
    for typ, flag in v.add_special.items():
        kvs.append(GGUFKV(f"tokenizer.ggml.add_{typ}_token", bool(flag), B))
    for name, flag in v.normalizer.items():
        kvs.append(GGUFKV(f"tokenizer.ggml.normalizer.{name}", bool(flag), B))
    if v.add_space_prefix is not None:
        kvs.append(GGUFKV("tokenizer.ggml.add_space_prefix", bool(v.add_space_prefix), B))
    ct = v.chat_template
    if isinstance(ct, str):
        kvs.append(GGUFKV("tokenizer.chat_template", ct, S))
    elif isinstance(ct, list):
        # GGUFWriter.add_chat_template: "default" -> tokenizer.chat_template, others by name
        names = []
        for entry in ct:
            name, tmpl = entry.get("name"), entry.get("template")
            if not isinstance(name, str) or not isinstance(tmpl, str):
                continue
            key = (
                "tokenizer.chat_template"
                if name == "default"
                else f"tokenizer.chat_template.{name}"
            )
            if name != "default":
                names.append(name)
            kvs.append(GGUFKV(key, tmpl, S))
        if names:
            kvs.append(GGUFKV("tokenizer.chat_templates", names, A, S))
    return kvs
