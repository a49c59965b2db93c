from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "shared_memory")
    class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DTYPE_UNSPECIFIED: _ClassVar[Tensor.DType]
        FP32: _ClassVar[Tensor.DType]
        FP16: _ClassVar[Tensor.DType]
        BF16: _ClassVar[Tensor.DType]
    DTYPE_UNSPECIFIED: Tensor.DType
    FP32: Tensor.DType
    FP16: Tensor.DType
    BF16: Tensor.DType
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    dtype: Tensor.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    shared_memory: SharedMemoryReference
    def __init__(self, dtype: _Optional[_Union[Tensor.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., shared_memory: _Optional[_Union[SharedMemoryReference, _Mapping]] = ...) -> None: ...

class SharedMemoryReference(_message.Message):
    __slots__ = ("region", "offset", "byte_size")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    byte_size: int
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class RegisterSharedMemoryRequest(_message.Message):
    __slots__ = ("name", "key", "offset", "byte_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    offset: int
    byte_size: int
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class RegisterSharedMemoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterSharedMemoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnregisterSharedMemoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SharedMemoryStatusRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SharedMemoryStatusResponse(_message.Message):
    __slots__ = ("regions",)
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[RegisterSharedMemoryRequest]
    def __init__(self, regions: _Optional[_Iterable[_Union[RegisterSharedMemoryRequest, _Mapping]]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "dynatemp_range", "dynatemp_exponent", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "top_n_sigma", "top_h", "mirostat", "mirostat_tau", "mirostat_eta", "optimal_k", "entropy_top_k", "entropy_top_k_min", "statistical_top_k", "xtc_probability", "xtc_threshold", "repetition_penalty", "frequency_penalty", "presence_penalty", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_sequence_breakers", "logit_bias", "min_tokens_to_keep", "n", "seed", "top_logprobs", "stats_top_k", "path_beams", "path_top_p")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    DYNATEMP_RANGE_FIELD_NUMBER: _ClassVar[int]
    DYNATEMP_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_P_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    TOP_N_SIGMA_FIELD_NUMBER: _ClassVar[int]
    TOP_H_FIELD_NUMBER: _ClassVar[int]
    MIROSTAT_FIELD_NUMBER: _ClassVar[int]
    MIROSTAT_TAU_FIELD_NUMBER: _ClassVar[int]
    MIROSTAT_ETA_FIELD_NUMBER: _ClassVar[int]
    OPTIMAL_K_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_TOP_K_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_TOP_K_MIN_FIELD_NUMBER: _ClassVar[int]
    STATISTICAL_TOP_K_FIELD_NUMBER: _ClassVar[int]
    XTC_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    XTC_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    DRY_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DRY_BASE_FIELD_NUMBER: _ClassVar[int]
    DRY_ALLOWED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DRY_SEQUENCE_BREAKERS_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_TO_KEEP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    STATS_TOP_K_FIELD_NUMBER: _ClassVar[int]
    PATH_BEAMS_FIELD_NUMBER: _ClassVar[int]
    PATH_TOP_P_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    dynatemp_range: float
    dynatemp_exponent: float
    top_k: int
    top_p: float
    min_p: float
    typical_p: float
    epsilon: float
    eta: float
    top_n_sigma: float
    top_h: float
    mirostat: int
    mirostat_tau: float
    mirostat_eta: float
    optimal_k: float
    entropy_top_k: int
    entropy_top_k_min: int
    statistical_top_k: int
    xtc_probability: float
    xtc_threshold: float
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    dry_multiplier: float
    dry_base: float
    dry_allowed_length: int
    dry_sequence_breakers: _containers.RepeatedScalarFieldContainer[int]
    logit_bias: _containers.ScalarMap[int, float]
    min_tokens_to_keep: int
    n: int
    seed: int
    top_logprobs: int
    stats_top_k: int
    path_beams: int
    path_top_p: float
    def __init__(self, temperature: _Optional[float] = ..., dynatemp_range: _Optional[float] = ..., dynatemp_exponent: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., min_p: _Optional[float] = ..., typical_p: _Optional[float] = ..., epsilon: _Optional[float] = ..., eta: _Optional[float] = ..., top_n_sigma: _Optional[float] = ..., top_h: _Optional[float] = ..., mirostat: _Optional[int] = ..., mirostat_tau: _Optional[float] = ..., mirostat_eta: _Optional[float] = ..., optimal_k: _Optional[float] = ..., entropy_top_k: _Optional[int] = ..., entropy_top_k_min: _Optional[int] = ..., statistical_top_k: _Optional[int] = ..., xtc_probability: _Optional[float] = ..., xtc_threshold: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., dry_multiplier: _Optional[float] = ..., dry_base: _Optional[float] = ..., dry_allowed_length: _Optional[int] = ..., dry_sequence_breakers: _Optional[_Iterable[int]] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., min_tokens_to_keep: _Optional[int] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ..., top_logprobs: _Optional[int] = ..., stats_top_k: _Optional[int] = ..., path_beams: _Optional[int] = ..., path_top_p: _Optional[float] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("logits", "params", "row_params", "steps", "request_id")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ROW_PARAMS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    logits: Tensor
    params: SamplingParams
    row_params: _containers.RepeatedCompositeFieldContainer[SamplingParams]
    steps: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, logits: _Optional[_Union[Tensor, _Mapping]] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., row_params: _Optional[_Iterable[_Union[SamplingParams, _Mapping]]] = ..., steps: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token_id", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ...) -> None: ...

class RowStatistics(_message.Message):
    __slots__ = ("entropy", "varentropy", "truncated_entropy", "kept_tokens", "kept_mass", "top_k_entropy", "top_k_mass", "surprise")
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    VARENTROPY_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    KEPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEPT_MASS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_MASS_FIELD_NUMBER: _ClassVar[int]
    SURPRISE_FIELD_NUMBER: _ClassVar[int]
    entropy: float
    varentropy: float
    truncated_entropy: float
    kept_tokens: int
    kept_mass: float
    top_k_entropy: float
    top_k_mass: float
    surprise: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, entropy: _Optional[float] = ..., varentropy: _Optional[float] = ..., truncated_entropy: _Optional[float] = ..., kept_tokens: _Optional[int] = ..., kept_mass: _Optional[float] = ..., top_k_entropy: _Optional[float] = ..., top_k_mass: _Optional[float] = ..., surprise: _Optional[_Iterable[float]] = ...) -> None: ...

class RowResult(_message.Message):
    __slots__ = ("token_ids", "logprobs", "top_logprobs", "stats", "strategy", "mirostat_mu")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MIROSTAT_MU_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    stats: RowStatistics
    strategy: str
    mirostat_mu: float
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., top_logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ..., stats: _Optional[_Union[RowStatistics, _Mapping]] = ..., strategy: _Optional[str] = ..., mirostat_mu: _Optional[float] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("rows", "request_id")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[RowResult]
    request_id: str
    def __init__(self, rows: _Optional[_Iterable[_Union[RowResult, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListStrategiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "type", "range", "default", "disabled_by", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DISABLED_BY_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    range: str
    default: str
    disabled_by: str
    doc: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., range: _Optional[str] = ..., default: _Optional[str] = ..., disabled_by: _Optional[str] = ..., doc: _Optional[str] = ...) -> None: ...

class StrategyInfo(_message.Message):
    __slots__ = ("name", "stage", "stage_order", "summary", "paper", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_ORDER_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PAPER_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    stage: str
    stage_order: int
    summary: str
    paper: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    def __init__(self, name: _Optional[str] = ..., stage: _Optional[str] = ..., stage_order: _Optional[int] = ..., summary: _Optional[str] = ..., paper: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ...) -> None: ...

class ListStrategiesResponse(_message.Message):
    __slots__ = ("strategies",)
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyInfo]
    def __init__(self, strategies: _Optional[_Iterable[_Union[StrategyInfo, _Mapping]]] = ...) -> None: ...

class SampleStreamRequest(_message.Message):
    __slots__ = ("open", "step", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    step: SessionStep
    close: SessionClose
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., step: _Optional[_Union[SessionStep, _Mapping]] = ..., close: _Optional[_Union[SessionClose, _Mapping]] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("session_id", "params", "sequences")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    params: SamplingParams
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceSpec]
    def __init__(self, session_id: _Optional[str] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., sequences: _Optional[_Iterable[_Union[SequenceSpec, _Mapping]]] = ...) -> None: ...

class SequenceSpec(_message.Message):
    __slots__ = ("sequence_id", "params", "prompt_token_ids")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    sequence_id: str
    params: SamplingParams
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sequence_id: _Optional[str] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionStep(_message.Message):
    __slots__ = ("sequence_ids", "logits", "forced")
    SEQUENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    sequence_ids: _containers.RepeatedScalarFieldContainer[str]
    logits: Tensor
    forced: _containers.RepeatedCompositeFieldContainer[ForcedTokens]
    def __init__(self, sequence_ids: _Optional[_Iterable[str]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., forced: _Optional[_Iterable[_Union[ForcedTokens, _Mapping]]] = ...) -> None: ...

class ForcedTokens(_message.Message):
    __slots__ = ("sequence_id", "token_ids")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    sequence_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sequence_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionClose(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SampleStreamResponse(_message.Message):
    __slots__ = ("opened", "step", "closed")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    step: SessionStepResult
    closed: SessionClosed
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., step: _Optional[_Union[SessionStepResult, _Mapping]] = ..., closed: _Optional[_Union[SessionClosed, _Mapping]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "sequences", "idle_timeout_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequences: int
    idle_timeout_s: float
    def __init__(self, session_id: _Optional[str] = ..., sequences: _Optional[int] = ..., idle_timeout_s: _Optional[float] = ...) -> None: ...

class SessionStepResult(_message.Message):
    __slots__ = ("step", "sequences", "statistics")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceResult]
    statistics: SessionStatistics
    def __init__(self, step: _Optional[int] = ..., sequences: _Optional[_Iterable[_Union[SequenceResult, _Mapping]]] = ..., statistics: _Optional[_Union[SessionStatistics, _Mapping]] = ...) -> None: ...

class SequenceResult(_message.Message):
    __slots__ = ("sequence_id", "step", "row", "paths", "statistics")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    sequence_id: str
    step: int
    row: RowResult
    paths: _containers.RepeatedCompositeFieldContainer[PathToken]
    statistics: SessionStatistics
    def __init__(self, sequence_id: _Optional[str] = ..., step: _Optional[int] = ..., row: _Optional[_Union[RowResult, _Mapping]] = ..., paths: _Optional[_Iterable[_Union[PathToken, _Mapping]]] = ..., statistics: _Optional[_Union[SessionStatistics, _Mapping]] = ...) -> None: ...

class PathToken(_message.Message):
    __slots__ = ("parent", "token_id", "token_logprob", "path_logprob")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    PATH_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    parent: int
    token_id: int
    token_logprob: float
    path_logprob: float
    def __init__(self, parent: _Optional[int] = ..., token_id: _Optional[int] = ..., token_logprob: _Optional[float] = ..., path_logprob: _Optional[float] = ...) -> None: ...

class SessionStatistics(_message.Message):
    __slots__ = ("tokens", "mean_surprise_bits", "log_perplexity", "mean_entropy", "perplexity_entropy_gap")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SURPRISE_BITS_FIELD_NUMBER: _ClassVar[int]
    LOG_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    MEAN_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_ENTROPY_GAP_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    mean_surprise_bits: float
    log_perplexity: float
    mean_entropy: float
    perplexity_entropy_gap: float
    def __init__(self, tokens: _Optional[int] = ..., mean_surprise_bits: _Optional[float] = ..., log_perplexity: _Optional[float] = ..., mean_entropy: _Optional[float] = ..., perplexity_entropy_gap: _Optional[float] = ...) -> None: ...

class SessionClosed(_message.Message):
    __slots__ = ("steps", "statistics", "sequences")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    steps: int
    statistics: SessionStatistics
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceSummary]
    def __init__(self, steps: _Optional[int] = ..., statistics: _Optional[_Union[SessionStatistics, _Mapping]] = ..., sequences: _Optional[_Iterable[_Union[SequenceSummary, _Mapping]]] = ...) -> None: ...

class SequenceSummary(_message.Message):
    __slots__ = ("sequence_id", "tokens", "statistics")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    sequence_id: str
    tokens: int
    statistics: SessionStatistics
    def __init__(self, sequence_id: _Optional[str] = ..., tokens: _Optional[int] = ..., statistics: _Optional[_Union[SessionStatistics, _Mapping]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("token_ids",)
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt_text", "prompt_token_ids", "params", "max_tokens", "stop", "stop_token_ids", "ignore_eos", "request_id")
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt_text: str
    prompt_token_ids: TokenIds
    params: SamplingParams
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    request_id: str
    def __init__(self, prompt_text: _Optional[str] = ..., prompt_token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "token", "finish")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token: GeneratedToken
    finish: GenerateFinish
    def __init__(self, request_id: _Optional[str] = ..., token: _Optional[_Union[GeneratedToken, _Mapping]] = ..., finish: _Optional[_Union[GenerateFinish, _Mapping]] = ...) -> None: ...

class GeneratedToken(_message.Message):
    __slots__ = ("index", "token_id", "text", "logprob", "stats", "strategy", "top_logprobs", "mirostat_mu")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MIROSTAT_MU_FIELD_NUMBER: _ClassVar[int]
    index: int
    token_id: int
    text: str
    logprob: float
    stats: RowStatistics
    strategy: str
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    mirostat_mu: float
    def __init__(self, index: _Optional[int] = ..., token_id: _Optional[int] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ..., stats: _Optional[_Union[RowStatistics, _Mapping]] = ..., strategy: _Optional[str] = ..., top_logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ..., mirostat_mu: _Optional[float] = ...) -> None: ...

class GenerateFinish(_message.Message):
    __slots__ = ("reason", "stop_string", "stop_token_id", "text", "output_text", "token_ids", "prompt_tokens", "statistics")
    class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FINISH_REASON_UNSPECIFIED: _ClassVar[GenerateFinish.FinishReason]
        LENGTH: _ClassVar[GenerateFinish.FinishReason]
        STOP: _ClassVar[GenerateFinish.FinishReason]
        EOS: _ClassVar[GenerateFinish.FinishReason]
        CANCELLED: _ClassVar[GenerateFinish.FinishReason]
    FINISH_REASON_UNSPECIFIED: GenerateFinish.FinishReason
    LENGTH: GenerateFinish.FinishReason
    STOP: GenerateFinish.FinishReason
    EOS: GenerateFinish.FinishReason
    CANCELLED: GenerateFinish.FinishReason
    REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_STRING_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    reason: GenerateFinish.FinishReason
    stop_string: str
    stop_token_id: int
    text: str
    output_text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_tokens: int
    statistics: SessionStatistics
    def __init__(self, reason: _Optional[_Union[GenerateFinish.FinishReason, str]] = ..., stop_string: _Optional[str] = ..., stop_token_id: _Optional[int] = ..., text: _Optional[str] = ..., output_text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., prompt_tokens: _Optional[int] = ..., statistics: _Optional[_Union[SessionStatistics, _Mapping]] = ...) -> None: ...
