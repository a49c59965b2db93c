"""Test data shared by the service tests: the parameter sets that switch each strategy on."""

# One parameter set per registered strategy that switches it on (checked by
# test_contract.test_every_strategy_has_an_activating_parameter_set).
ACTIVATING: dict[str, dict] = {
    "repetition_penalty": {"repetition_penalty": 1.3},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "presence_penalty": {"presence_penalty": 0.5},
    "dry": {"dry_multiplier": 0.8},
    "logit_bias": {"logit_bias": {3: 5.0, 7: -100.0}},
    "greedy": {"temperature": 0.0},
    "temperature": {"temperature": 0.7},
    "dynatemp": {"dynatemp_range": 0.5},
    "top_n_sigma": {"top_n_sigma": 1.0},
    "top_k": {"top_k": 20},
    "optimal_k": {"optimal_k": 0.1},
    "entropy_top_k": {"entropy_top_k": 50, "entropy_top_k_min": 5},
    "statistical_top_k": {"statistical_top_k": 30},
    "top_h": {"top_h": 0.4},
    "top_p": {"top_p": 0.9},
    "min_p": {"min_p": 0.05},
    "typical": {"typical_p": 0.9},
    "epsilon": {"epsilon": 3e-4},
    "eta": {"eta": 1e-3},
    "xtc": {"xtc_probability": 0.5, "xtc_threshold": 0.05},
    "mirostat_v1": {"mirostat": 1},
    "mirostat_v2": {"mirostat": 2},
    "path_top_p": {"path_beams": 2, "path_top_p": 0.9},
}

# Strategies a unary Sample cannot run (they need a decoding session), with the field named.
SESSION_ONLY = {"path_top_p": "params.path_beams"}
