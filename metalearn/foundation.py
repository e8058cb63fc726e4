"""Load the frozen base model once: by name or path, optionally 4-bit (NF4, QLoRA) or int8.

The base is shared by every task and never copied; only adapter tensors vary per task.
bitsandbytes is imported lazily, so CPU-only users without quantization never touch it.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

import torch
from torch import nn

from . import hub
from .config import BaseConfig
from .quant import keep_standard_layout

log = logging.getLogger("metalearn")

ENCODER_ONLY = ("bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "mpnet", "xlm-roberta",
                "albert", "modernbert")


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def native_bf16() -> bool:
    """Whether bfloat16 matrix products run at full speed here: a CUDA GPU with bf16, or a CPU with AVX512-BF16.

    On such a CPU oneDNN multiplies in bfloat16 about 5x faster than in float32 (511 vs 107 GFLOP/s on one
    core of the machine README's numbers come from); without it bfloat16 is emulated, about 30x *slower*.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_compute_dtype() -> str:
    """QLoRA's compute dtype, bfloat16, where this machine runs it natively (``native_bf16``), else float32."""
    return "bfloat16" if native_bf16() else "float32"


def quantization_config(config: BaseConfig):
    """The transformers ``BitsAndBytesConfig`` for ``config.quantization`` (None when unquantized)."""
    if config.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if config.quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=config.double_quant,
                                  bnb_4bit_compute_dtype=torch_dtype(config.compute_dtype))
    return BitsAndBytesConfig(load_in_8bit=True)


def infer_model_type(hf_config) -> str:
    """'seq2seq', 'encoder' or 'causal' from a transformers config."""
    if getattr(hf_config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = getattr(hf_config, "architectures", None) or []
    if any("CausalLM" in a or "LMHead" in a for a in architectures):
        return "causal"
    if architectures or getattr(hf_config, "model_type", "") in ENCODER_ONLY:
        return "encoder"
    return "causal"


def _auto_class(model_type: str):
    import transformers

    return {"causal": transformers.AutoModelForCausalLM, "encoder": transformers.AutoModel,
            "seq2seq": transformers.AutoModelForSeq2SeqLM}[model_type]


def load_base(config: BaseConfig, model: Optional[nn.Module] = None, second_order: bool = False) -> tuple[nn.Module, str]:
    """Load (or take) the frozen base model; return it with its model type.

    ``model`` may be an in-memory transformers model (e.g. built with ``from_config``); when
    ``config.quantization`` is set it is saved to a temporary folder and reloaded quantized, exactly
    as a model from the Hub would be. Plain ``nn.Module``s are used as they are (model type
    "module"). With ``second_order=True`` attention switches to eager, which has a double backward
    (SDPA's fused kernels do not), unless ``config.attn_implementation`` says otherwise.
    """
    attn = config.attn_implementation or ("eager" if second_order else None)
    if config.compute_dtype == "bfloat16" and not native_bf16():
        log.warning("compute_dtype='bfloat16' on a machine without native bfloat16 (a CPU without AVX512-BF16, or a "
                    "GPU without bf16): bfloat16 matrix products are emulated here, on CPU about 30x slower than "
                    "float32; use compute_dtype='float32' (or metalearn.foundation.fast_compute_dtype()) on this machine")
    if model is not None and not hasattr(model, "config"):
        if config.quantization:
            raise ValueError("quantization is set but the model is a plain nn.Module; bitsandbytes quantization "
                             "applies to transformers models: pass quantization=None or a transformers model")
        base = model
        model_type = "module"
    else:
        if model is not None:
            model_type = config.model_type if config.model_type != "auto" else infer_model_type(model.config)
            if config.quantization:
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_pretrained(tmp)
                    base = _from_pretrained(tmp, model_type, config, attn)
            else:
                base = model
                if attn and getattr(base.config, "_attn_implementation", None) != attn:
                    _set_attention(base, attn)
        else:
            if not config.name_or_path:
                raise ValueError("base.name_or_path is not set: name a Hugging Face model id or a local folder, "
                                 "or pass model=<an nn.Module>")
            hf_config = _load_hf_config(config.name_or_path)
            model_type = config.model_type if config.model_type != "auto" else infer_model_type(hf_config)
            base = _from_pretrained(config.name_or_path, model_type, config, attn)
        if second_order and attn == "eager":
            log.info("second order is on: attention set to 'eager' (SDPA's fused kernels have no double backward)")
    for p in base.parameters():
        p.requires_grad_(False)
    keep_standard_layout(base)  # one 4-bit layout on every CPU: see metalearn.quant
    base.eval()
    return base, model_type


def _load_hf_config(name_or_path: str):
    from transformers import AutoConfig

    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith(".") or name_or_path.count("/") > 1
    if looks_local and not os.path.exists(name_or_path):
        raise ValueError(f"model path {name_or_path!r} does not exist: give an existing folder written by "
                         "save_pretrained, or a Hugging Face model id")
    if not os.path.exists(name_or_path):
        hub.check_reachable(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set: only models in the local cache load)" if constants.HF_HUB_OFFLINE else ""
        raise ValueError(f"cannot load model {name_or_path!r}: it is neither a local model folder nor a reachable "
                         f"Hugging Face model id{offline} ({type(err).__name__}: {str(err).splitlines()[0]}). Check "
                         "the name, or download it and pass the folder") from None


def _from_pretrained(path: str, model_type: str, config: BaseConfig, attn: Optional[str]) -> nn.Module:
    kwargs = {}
    quant = quantization_config(config)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map="cpu" if not torch.cuda.is_available() else {"": 0})
    else:
        kwargs.update(dtype=torch_dtype(config.compute_dtype))
    if attn:
        kwargs["attn_implementation"] = attn
    return _auto_class(model_type).from_pretrained(path, **kwargs)


def _set_attention(model: nn.Module, attn: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn)
    else:  # older transformers
        model.config._attn_implementation = attn


def load_tokenizer(name_or_path: Optional[str]):
    """The tokenizer saved with a model, or a byte-level one for models built from a config."""
    if name_or_path:
        from transformers import AutoTokenizer

        if not os.path.exists(name_or_path):
            hub.check_reachable(name_or_path)
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError):
            tok = None
        if tok is not None:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return tok
    return byte_tokenizer()


def byte_tokenizer():
    """A character-level tokenizer over printable ASCII (ids < 128), for tiny models built from configs."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def tiny_llama(vocab_size: int = 512, hidden_size: int = 128, layers: int = 4, heads: int = 4,
               seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialized Llama built from a config (for tests, demos and benchmarks)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
