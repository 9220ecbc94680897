"""Typed access to a Hugging Face config.json, with the field aliases the engines accept."""

from __future__ import annotations

from typing import Any

from gpustack_pulumi.analysis.errors import InvalidConfigFieldError, MissingConfigFieldError

# Fields that bound the context length, in the order vLLM reads them (``_get_and_verify_max_len``).
MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
DEFAULT_MAX_LEN = 2048  # vLLM's fallback when no key is present


class ConfigView:
    """Read fields of one config dict; errors name the field, the architecture and the file.

    Multimodal configs keep the language model under ``text_config`` (Gemma 3, Qwen-VL...): its fields win,
    and the root's fill the gaps.
    """

    def __init__(self, raw: dict[str, Any], *, source: str, architecture: str) -> None:
        text = raw.get("text_config") or raw.get("llm_config")
        self.raw: dict[str, Any] = {**raw, **text} if isinstance(text, dict) else dict(raw)
        self.source = source
        self.architecture = architecture

    def has(self, *names: str) -> bool:
        return any(self.raw.get(name) is not None for name in names)

    def get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            value = self.raw.get(name)
            if value is not None:
                return value
        return default

    def require_int(self, *names: str, hint: str = "") -> int:
        for name in names:
            value = self.raw.get(name)
            if value is not None:
                return self._positive_int(name, value)
        raise MissingConfigFieldError(names[0], architecture=self.architecture, source=self.source, hint=hint)

    def int_or(self, *names: str, default: int) -> int:
        for name in names:
            value = self.raw.get(name)
            if value is not None:
                return self._positive_int(name, value, allow_zero=True)
        return default

    def _positive_int(self, name: str, value: Any, *, allow_zero: bool = False) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise InvalidConfigFieldError(name, value, source=self.source, expected="an integer")
        if value < 0 or (value == 0 and not allow_zero):
            raise InvalidConfigFieldError(name, value, source=self.source, expected="a positive integer")
        return int(value)

    # ----- common derived fields ------------------------------------------------------------------------
    def hidden_size(self) -> int:
        return self.require_int("hidden_size", "d_model", "n_embd")

    def num_layers(self) -> int:
        return self.require_int("num_hidden_layers", "num_layers", "n_layer")

    def num_attention_heads(self) -> int:
        return self.require_int("num_attention_heads", "n_head", "num_heads")

    def num_kv_heads(self) -> int:
        """``num_key_value_heads`` and its aliases; absent means multi-head attention (= attention heads)."""
        for name in ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"):
            value = self.raw.get(name)
            if value is not None:
                return self._positive_int(name, value)
        return self.num_attention_heads()

    def head_dim(self) -> int:
        """Explicit ``head_dim`` first (Qwen3, Gemma, GLM need it), else hidden_size / heads."""
        explicit = self.raw.get("head_dim")
        if explicit is not None:
            return self._positive_int("head_dim", explicit)
        hidden, heads = self.hidden_size(), self.num_attention_heads()
        if hidden % heads:
            raise MissingConfigFieldError(
                "head_dim",
                architecture=self.architecture,
                source=self.source,
                hint=f"hidden_size {hidden} is not divisible by num_attention_heads {heads}, so set head_dim",
            )
        return hidden // heads

    def vocab_size(self) -> int:
        return self.require_int("vocab_size", "padded_vocab_size")

    def tie_word_embeddings(self, default: bool = False) -> bool:
        return bool(self.get("tie_word_embeddings", default=default))

    def rope_scaling(self) -> dict[str, Any] | None:
        scaling = self.get("rope_scaling", "rope_parameters")
        return scaling if isinstance(scaling, dict) else None

    def max_model_len(self) -> int:
        """The context length vLLM derives: the smallest length key, scaled by rope scaling.

        ``yarn`` multiplies ``original_max_position_embeddings`` by the factor; ``llama3``, ``longrope`` and
        ``su`` already give the extended length in ``max_position_embeddings``; other types multiply it.
        """
        lengths = [self._positive_int(k, self.raw[k]) for k in MAX_LEN_KEYS if self.raw.get(k) is not None]
        derived = min(lengths) if lengths else DEFAULT_MAX_LEN
        scaling = self.rope_scaling()
        if scaling:
            rope_type = str(scaling.get("rope_type") or scaling.get("type") or "default")
            factor = scaling.get("factor")
            if rope_type not in ("su", "longrope", "llama3", "default", "mrope") and factor:
                if rope_type == "yarn":
                    derived = int(scaling.get("original_max_position_embeddings") or derived)
                derived = int(derived * float(factor))
        return derived
