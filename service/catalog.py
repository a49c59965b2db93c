"""The ``ListStrategies`` answer, generated from :mod:`samplerd.sampling.registry` (the one source of truth)."""

from __future__ import annotations

from samplerd.sampling.declarations import Parameter, Strategy
from samplerd.sampling.registry import STRATEGIES
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb


def parameter_info(parameter: Parameter) -> pb.ParameterInfo:
    """The proto description of one registry parameter."""
    return pb.ParameterInfo(
        name=parameter.name,
        type=parameter.kind,
        range=parameter.range_text(),
        default=_default_text(parameter.default),
        disabled_by=parameter.off,
        doc=parameter.doc,
    )


def strategy_info(strategy: Strategy) -> pb.StrategyInfo:
    """The proto description of one registry strategy."""
    return pb.StrategyInfo(
        name=strategy.name,
        stage=strategy.stage.name,
        stage_order=int(strategy.stage),
        summary=strategy.summary,
        paper=strategy.paper,
        parameters=[parameter_info(p) for p in strategy.parameters],
    )


def list_strategies() -> pb.ListStrategiesResponse:
    """Every registered strategy, in pipeline (stage) order."""
    ordered = sorted(STRATEGIES, key=lambda s: int(s.stage))
    return pb.ListStrategiesResponse(strategies=[strategy_info(s) for s in ordered])


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (tuple, list, dict)) and not value:
        return "empty"
    return str(value)
